"""The docker backend: one locked-down container per session, driven through the Docker API
(Docker, or ``podman system service``).

Each container runs the same worker as its main process (pid 1 of its own pid namespace) and speaks
the same framed protocol over its attached stdin/stdout. The container has no network
(``network_mode=none``), a read-only root, a size-capped tmpfs ``/tmp`` work dir, a non-root user,
no capabilities, ``no-new-privileges``, cgroup memory / CPU / pids limits, and inside it the worker
still applies its rlimits and seccomp filter. The Docker SDK is synchronous, so every call to it runs
in a thread; the attach socket is handed to asyncio streams.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
from typing import Any

from sandbox.channel import WorkerHandle, worker_source
from sandbox.config import SandboxConfig
from sandbox.errors import SandboxError, require
from sandbox.layers import seccomp_bpf, warn_missing

__all__ = ["DemuxReader", "DockerBackend"]

DOCKER_HEADER = struct.Struct(">BxxxI")
USER = "65534:65534"
LABEL = "splice.sandbox"
EXIT_WAIT_S = 10.0  # podman reports a container's exit status a second or two late


class DemuxReader:
    """Strips Docker's stream multiplexing (8-byte headers) and keeps only stdout."""

    def __init__(self, reader: asyncio.StreamReader):
        self._reader = reader
        self._buffer = bytearray()
        self.stderr = bytearray()

    async def readexactly(self, n: int) -> bytes:
        while len(self._buffer) < n:
            stream, size = DOCKER_HEADER.unpack(await self._reader.readexactly(DOCKER_HEADER.size))
            payload = await self._reader.readexactly(size)
            if stream == 2:
                self.stderr += payload[: max(0, 4096 - len(self.stderr))]
            else:
                self._buffer += payload
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data


class DockerBackend:
    name = "docker"

    def __init__(self, config: SandboxConfig):
        self.config = config
        self.client: Any = None
        self.python = config.python or "python3"

    async def prepare(self) -> None:
        if self.client is not None:
            return
        docker = require("docker", "docker")
        try:
            self.client = await asyncio.to_thread(self._connect, docker)
        except docker.errors.DockerException as e:
            where = self.config.docker_host or "DOCKER_HOST"
            raise SandboxError(f"cannot reach the Docker API at {where}: {e}") from e
        if self.config.seccomp and await asyncio.to_thread(seccomp_bpf) is None:
            warn_missing("seccomp", "pyseccomp/libseccomp not installed: only the engine's default seccomp "
                         "profile applies (pip install 'splice[sandbox]')")

    def _connect(self, docker: Any) -> Any:
        host = self.config.docker_host or os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        if host.startswith("unix://") and not os.path.exists(host.removeprefix("unix://")):
            # the SDK would open a socket, fail to connect and leave it unclosed
            raise docker.errors.DockerException(f"no socket at {host.removeprefix('unix://')}")
        client = docker.DockerClient(base_url=self.config.docker_host) if self.config.docker_host \
            else docker.from_env()
        try:
            client.ping()
            client.images.get(self.config.image)
        except docker.errors.ImageNotFound as e:
            client.close()
            raise SandboxError(f"sandbox image {self.config.image!r} not found: build it with "
                               f"`python -m sandbox.image --tag {self.config.image}`") from e
        except BaseException:
            client.close()  # an unreachable engine: no socket left open
            raise
        return client

    async def start_worker(self) -> WorkerHandle:
        await self.prepare()
        container = await asyncio.to_thread(self._create)
        try:
            sock = await asyncio.to_thread(self._attach, container)
            await asyncio.to_thread(container.start)
            raw = getattr(sock, "_sock", sock)
            raw.setblocking(False)
            reader, writer = await asyncio.open_connection(sock=raw)
        except BaseException:
            await asyncio.to_thread(self._remove, container)
            raise
        demux = DemuxReader(reader)
        handle = self._handle(container, sock, demux, writer)
        try:
            await handle.handshake(self._worker_config(), timeout_s=60.0)
        except SandboxError as e:
            raise SandboxError(f"{e}; stderr: {bytes(demux.stderr).decode(errors='replace')!r}") from e
        return handle

    def _handle(self, container: Any, sock: Any, demux: DemuxReader,
                writer: asyncio.StreamWriter) -> WorkerHandle:
        async def kill() -> None:
            await asyncio.to_thread(self._remove, container)
            sock.close()  # the attach socket; keeping ``sock`` referenced keeps the HTTP response alive

        async def exit_code() -> int | None:
            return await asyncio.to_thread(self._exit_code, container)

        cap = self.config.max_output_chars
        return WorkerHandle(demux, writer, kill, exit_code, max_frame=24 * cap + (1 << 20),
                            label=f"container {container.short_id}", exit_wait_s=EXIT_WAIT_S)

    def _create(self) -> Any:
        from docker.types import Ulimit

        cfg = self.config
        nofile = cfg.max_open_files
        # The cgroup caps the container's total: each process's address space (RLIMIT_AS =
        # memory_mb), plus the tmpfs work dir (its pages are charged to the cgroup), plus slack, so a
        # single process hits a clean MemoryError long before the cgroup starts reclaiming.
        total = f"{cfg.memory_mb + cfg.tmp_size_mb + 64}m"
        return self.client.containers.create(
            cfg.image, command=[self.python, "-I", "-S", "-c", worker_source()], user=USER,
            network_mode="none", read_only=True, working_dir="/tmp",
            tmpfs={"/tmp": f"size={cfg.tmp_size_mb}m,mode=1777,exec"},
            mem_limit=total, memswap_limit=total,
            nano_cpus=int(cfg.cpus * 1e9), pids_limit=cfg.max_processes, cap_drop=["ALL"],
            security_opt=["no-new-privileges"], stdin_open=True, tty=False,
            environment={"HOME": "/tmp", "TMPDIR": "/tmp", "LANG": "C.UTF-8",
                         "PATH": "/usr/local/bin:/usr/bin:/bin"},
            ulimits=[Ulimit(name="nofile", soft=nofile, hard=nofile),
                     Ulimit(name="nproc", soft=cfg.max_processes * 16, hard=cfg.max_processes * 16)],
            labels={LABEL: "1"}, hostname="sandbox")

    def _attach(self, container: Any) -> Any:
        return self.client.api.attach_socket(container.id, params={"stdin": 1, "stdout": 1, "stderr": 1,
                                                                  "stream": 1})

    def _remove(self, container: Any) -> None:
        import docker

        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as e:
            if "removal" not in str(e) and "in progress" not in str(e):
                raise SandboxError(f"cannot remove sandbox container {container.short_id}: {e}") from e

    def _exit_code(self, container: Any) -> int | None:
        try:
            return int(container.wait(timeout=EXIT_WAIT_S)["StatusCode"])
        except Exception:  # noqa: BLE001 - already gone or engine hiccup: unknown
            return None

    def _worker_config(self) -> dict[str, Any]:
        bpf = seccomp_bpf() if self.config.seccomp else None
        limits = {k: v for k, v in self.config.limits().items() if k != "max_processes"}  # pids cgroup
        return {"limits": limits, "workdir": "/tmp", "reap": "all",
                "seccomp": base64.b64encode(bpf).decode() if bpf else None,
                "max_output_bytes": self.config.max_output_chars}

    async def aclose(self) -> None:
        if self.client is not None:
            client, self.client = self.client, None
            await asyncio.to_thread(client.close)
