"""Helpers for the sandbox tests: a real Docker-API engine from ``podman system service``.

Not a conftest (other people own tests/conftest.py): test modules call ``engine_host`` from their
own fixture. The engine is hermetic: podman runs with its own storage (images, containers, layers),
run root, temp dir and network config, all in one directory under this test session's pytest temp
dir, and with its own ``containers.conf`` / ``storage.conf`` (``CONTAINERS_CONF``,
``CONTAINERS_STORAGE_CONF``), so nothing in the machine's podman storage or config (images left by
earlier runs, ``podman rmi -a`` or not) can change an outcome. One engine serves the whole session:
the test image is built from this host's Python (``sandbox.image``; nothing can be pulled) and
imported once, and the engine is stopped, its mounts undone and its storage deleted when the session
ends.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

TEST_IMAGE = "splice-sandbox:test"
ENGINE_KEY = pytest.StashKey["PodmanEngine"]()


@dataclass
class PodmanEngine:
    """``podman system service`` over storage in ``root`` only."""

    root: Path
    proc: subprocess.Popen | None = None
    client: Any = None
    log: Any = field(default=None, repr=False)

    @property
    def sock(self) -> Path:
        return self.root / "podman.sock"

    @property
    def host(self) -> str:
        return f"unix://{self.sock}"

    def paths(self) -> dict[str, Path]:
        return {name: self.root / name for name in ("graph", "run", "tmp", "networks", "home")}

    def command(self) -> list[str]:
        podman = shutil.which("podman")
        if podman is None:
            pytest.skip("podman is not installed (scripts/system-deps.sh): docker backend not tested")
        p = self.paths()
        cmd = [podman, "--root", str(p["graph"]), "--runroot", str(p["run"]), "--tmpdir", str(p["tmp"]),
               "--storage-driver", "overlay", "--cgroup-manager", "cgroupfs", "--events-backend", "file"]
        if shutil.which("runc"):
            cmd += ["--runtime", "runc"]
        return cmd

    def env(self) -> dict[str, str]:
        """Only our config files count: the machine's /etc/containers and ~/.config are never read."""
        p = self.paths()
        for d in p.values():
            d.mkdir(parents=True, exist_ok=True)
        storage, conf = self.root / "storage.conf", self.root / "containers.conf"
        storage.write_text(f'[storage]\ndriver = "overlay"\ngraphroot = "{p["graph"]}"\nrunroot = "{p["run"]}"\n')
        conf.write_text(f'[engine]\ntmp_dir = "{p["tmp"]}"\nevents_logger = "file"\ncgroup_manager = "cgroupfs"\n'
                        f'[network]\nnetwork_config_dir = "{p["networks"]}"\n')
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(p["home"]),
               "CONTAINERS_CONF": str(conf), "CONTAINERS_STORAGE_CONF": str(storage)}
        if "XDG_RUNTIME_DIR" in os.environ:  # rootless podman keeps its pause process there
            env["XDG_RUNTIME_DIR"] = os.environ["XDG_RUNTIME_DIR"]
        return env

    def start(self) -> None:
        from sandbox.image import ensure_image

        cmd = [*self.command(), "system", "service", "--time=0", self.host]
        env = self.env()
        self.log = open(self.root / "podman.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.client = self._wait_for()
        if self.client.images.list(all=True):
            raise RuntimeError(f"the test engine's fresh storage in {self.root} already holds images")
        ensure_image(self.client, TEST_IMAGE)

    def _wait_for(self) -> Any:
        import docker

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"podman system service exited: {self.log_tail()}")
            if self.sock.exists():
                client = docker.DockerClient(base_url=self.host)
                try:
                    client.ping()
                    return client
                except docker.errors.DockerException:
                    client.close()
            time.sleep(0.05)
        raise RuntimeError(f"podman system service did not come up within 30 s: {self.log_tail()}")

    def log_tail(self) -> str:
        path = self.root / "podman.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def remove_containers(self) -> None:
        import docker

        for c in self.client.containers.list(all=True, filters={"label": "splice.sandbox"}):
            with contextlib.suppress(docker.errors.APIError):
                c.remove(force=True)

    def stop(self) -> None:
        """Stop the service, undo every mount it left under ``root`` and delete its storage."""
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.remove_containers()
            self.client.close()
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.log is not None:
            self.log.close()
        for mount in mounts_under(self.root):
            subprocess.run(["umount", "-l", mount], check=False, capture_output=True)
        for path in self.paths().values():
            shutil.rmtree(path, ignore_errors=True)


def mounts_under(root: Path) -> list[str]:
    """Mount points at or below ``root``, deepest first (overlay keeps one on its own home)."""
    prefix = str(root.resolve())
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            points.append(point)
    return sorted(points, key=len, reverse=True)


def engine_host(config: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> str:
    """DOCKER_HOST of this session's hermetic engine, started (and the image imported) on first use."""
    engine = config.stash.get(ENGINE_KEY, None)
    if engine is None:
        engine = PodmanEngine(tmp_path_factory.mktemp("podman"))
        try:
            engine.start()
        except BaseException:  # a skip (no podman) or a failure: leave nothing running
            engine.stop()
            raise
        config.stash[ENGINE_KEY] = engine
        config.add_cleanup(engine.stop)
    elif engine.proc is None or engine.proc.poll() is not None:
        raise RuntimeError(f"the session's podman engine is not running: {engine.log_tail()}")
    return engine.host
