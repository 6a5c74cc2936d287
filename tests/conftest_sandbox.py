"""Helpers for the sandbox tests: a real Docker-API engine from ``podman system service``.

Not a conftest (other people own tests/conftest.py): test modules import ``podman_service`` and wrap
it in their own fixture. The service listens on a unix socket in a temp dir; the test image is built
locally from this host's Python (``sandbox.image``), since nothing can be pulled.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

TEST_IMAGE = "splice-sandbox:test"


def podman_base() -> list[str]:
    podman = shutil.which("podman")
    if podman is None:
        pytest.skip("podman is not installed (apt-get install podman runc): docker backend not tested")
    cmd = [podman, "--cgroup-manager", "cgroupfs", "--events-backend", "file"]
    if shutil.which("runc"):
        cmd += ["--runtime", "runc"]
    return cmd


@contextlib.contextmanager
def podman_service(workdir: Path) -> Iterator[str]:
    """Start ``podman system service`` on a unix socket; yield its DOCKER_HOST; stop it after."""
    import docker

    sock = workdir / "podman.sock"
    log = open(workdir / "podman.log", "wb")  # noqa: SIM115 - closed in the finally below
    proc = subprocess.Popen([*podman_base(), "system", "service", "--time=0", f"unix://{sock}"],
                            stdout=log, stderr=subprocess.STDOUT)
    host = f"unix://{sock}"
    client = None
    try:
        client = _wait_for(host, proc, workdir)
        from sandbox.image import ensure_image

        ensure_image(client, TEST_IMAGE)
        yield host
    finally:
        if client is not None:
            for c in client.containers.list(all=True, filters={"label": "splice.sandbox"}):
                with contextlib.suppress(docker.errors.APIError):
                    c.remove(force=True)
            client.close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _wait_for(host: str, proc: subprocess.Popen, workdir: Path):
    import docker

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log = (workdir / "podman.log").read_text()[-2000:]
            raise RuntimeError(f"podman system service exited: {log}")
        if (workdir / "podman.sock").exists():
            client = docker.DockerClient(base_url=host)
            try:
                client.ping()
                return client
            except docker.errors.DockerException:
                client.close()
        time.sleep(0.05)
    raise RuntimeError("podman system service did not come up within 30 s")
