"""The process backend: one persistent, isolated Python worker process per session.

Layers, strongest first (each missing one is named in ONE ``SandboxDegraded`` warning):

* a per-worker unprivileged uid (when splice runs as root), so RLIMIT_NPROC counts this worker alone
  and nothing it starts can signal anything else;
* bubblewrap: new user, pid, net, ipc, uts and cgroup namespaces, a read-only bind of ``/usr`` and the
  interpreter only (no /root, /home, host /tmp, project), a size-capped private tmpfs at ``/tmp``,
  no capabilities, no further user namespaces, ``--die-with-parent``;
  or, without bubblewrap and only with ``allow_weak_isolation``, ``unshare`` (user, net, pid, ipc, uts
  and mount namespaces; empty private tmpfs over /tmp, /dev/shm, /var/tmp, /run, /home, /root, ...;
  capabilities dropped; other host files by unix permissions only), or ``none``;
* a seccomp filter (loaded by bwrap before it execs the worker; by the worker itself otherwise) and
  rlimits (AS, CPU, FSIZE, NPROC, NOFILE, CORE) the worker sets before it reads any code;
* a scrubbed environment, a wall-clock timeout that kills the process tree.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import random
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from sandbox.channel import BOOTSTRAP, WorkerHandle, worker_code, worker_source
from sandbox.config import SandboxConfig
from sandbox.errors import SandboxError
from sandbox.layers import HostLayers, probe_host, seccomp_bpf, shared_prefix, warn_missing

__all__ = ["ProcessBackend"]

UID_BASE, UID_SPAN = 1_000_000, 1 << 20
KILL_WAIT_S = 10.0
log = logging.getLogger(__name__)
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
ETC_FILES = ("/etc/ld.so.cache", "/etc/localtime", "/etc/ssl/certs", "/etc/mime.types")
# unshare mode: host dirs hidden under an empty private tmpfs (the first two writable, size-capped).
WRITABLE_MASKS = ("/tmp", "/dev/shm")
READONLY_MASKS = ("/var/tmp", "/run", "/home", "/root", "/mnt", "/media", "/srv", "/var/lib", "/var/spool")
WEAK_GAPS = {
    "unshare": "code can read world-readable host files and reach world-writable host unix sockets outside "
               f"the masked dirs ({', '.join(WRITABLE_MASKS + READONLY_MASKS)})",
    "none": "code shares the host network, sees host processes and reads or writes every host file its uid can",
}


class ProcessBackend:
    name = "process"

    def __init__(self, config: SandboxConfig):
        self.config = config
        self.python = config.python or os.path.realpath(getattr(sys, "_base_executable", sys.executable))
        self.mode = "none"
        self.prefix = self.shared = ""
        self.layers: HostLayers | None = None
        self._uids: set[int] = set()
        self.masks: list[tuple[str, bool]] = []
        self._setpriv = shutil.which("setpriv") or ""

    async def prepare(self) -> None:
        """Probe the host once per process and pick the strongest mode; warn about what is missing."""
        self.layers = await asyncio.to_thread(probe_host)
        if self.layers.root and not self._setpriv:
            raise SandboxError("running as root needs setpriv (util-linux) to drop to a worker uid")
        self.prefix = str(Path(self.python).resolve().parent.parent)
        self.shared = await asyncio.to_thread(shared_prefix, self.prefix)
        self.mode = self._choose_mode(self.layers)
        self.masks = self._masks() if self.mode == "unshare" else []
        self._warn_degraded(self.layers)

    def _choose_mode(self, layers: HostLayers) -> str:
        wanted = self.config.isolation
        available = {"bwrap": layers.bwrap, "unshare": layers.unshare, "none": "yes"}
        if wanted != "auto":
            if not available[wanted]:
                raise SandboxError(f"sandbox isolation {wanted!r} was requested but does not work here: "
                                   "install bubblewrap / enable user namespaces, or use isolation='auto'")
            mode = wanted
        else:
            mode = next(m for m in ("bwrap", "unshare", "none") if available[m])
        if mode != "bwrap" and not self.config.allow_weak_isolation:
            raise SandboxError(self._refusal(mode, layers))
        return mode

    def _refusal(self, mode: str, layers: HostLayers) -> str:
        if layers.bwrap:
            why = f"isolation {mode!r} was requested"
        else:
            why = "bubblewrap (bwrap) " + ("does not work here" if shutil.which("bwrap") else "is not installed")
            if not layers.unshare:
                why += ", nor does unshare (unprivileged user namespaces)"
        return (f"the sandbox will not start: {why}, and isolation {mode!r} is weaker than bubblewrap: "
                f"{WEAK_GAPS[mode]}. Install bubblewrap (apt-get install bubblewrap, or scripts/system-deps.sh) "
                "and use isolation='auto', or accept the weaker isolation with allow_weak_isolation=True")

    def _masks(self) -> list[tuple[str, bool]]:
        """The dirs unshare mode hides (path, writable); never one holding the interpreter it runs."""
        python = self._python_argv(outside=True)[0]
        keep = []
        for path in WRITABLE_MASKS + READONLY_MASKS:
            real = os.path.realpath(path)
            if os.path.isdir(real) and not (python + "/").startswith(real.rstrip("/") + "/"):
                keep.append((real, path in WRITABLE_MASKS))
        return list(dict.fromkeys(keep))

    def _warn_degraded(self, layers: HostLayers) -> None:
        if self.mode == "unshare":
            warn_missing("bubblewrap", f"allow_weak_isolation: {WEAK_GAPS['unshare']} (install bubblewrap)")
        elif self.mode == "none":
            warn_missing("namespaces", f"allow_weak_isolation: {WEAK_GAPS['none']} (install bubblewrap)")
        if not layers.root:
            warn_missing("uid separation", "not running as root, so workers run as your own uid: "
                         "RLIMIT_NPROC is shared with your processes")
        if self.config.seccomp and not layers.seccomp:
            warn_missing("seccomp", "pyseccomp/libseccomp not installed: ptrace, mount, raw sockets etc. "
                         "are not filtered (pip install 'splice[sandbox]')")

    async def start_worker(self) -> WorkerHandle:
        if self.layers is None:
            await self.prepare()
        uid = self._allocate_uid()
        workdir = self._host_workdir(uid)  # no thread: a cancelled to_thread would leak the dir
        try:
            proc = await self._spawn(uid, workdir)
        except BaseException:
            self._release(uid, workdir)
            raise
        handle = self._handle(proc, uid, workdir)
        try:
            preamble = worker_code() if self._same_python else b""
            await handle.handshake(self._worker_config(workdir), timeout_s=30.0, preamble=preamble)
        except SandboxError as e:
            raise SandboxError(f"{e}; stderr: {await _read_some(proc.stderr)!r}") from e
        return handle

    async def _spawn(self, uid: int | None, workdir: str | None) -> asyncio.subprocess.Process:
        bpf_fd = self._seccomp_fd()
        fds = () if bpf_fd is None else (bpf_fd,)
        try:
            return await asyncio.create_subprocess_exec(
                *self._demote(uid), *self._command(workdir, bpf_fd), stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=self._env(workdir),
                cwd=workdir or "/", start_new_session=True, pass_fds=fds)
        except OSError as e:
            raise SandboxError(f"cannot start sandbox worker {self._command(workdir, None)[0]}: {e}") from e
        finally:
            if bpf_fd is not None:
                os.close(bpf_fd)

    def _release(self, uid: int | None, workdir: str | None) -> None:
        """Forget a worker's uid and delete its host work dir (with the root-owned dir around it)."""
        if uid is not None:
            self._uids.discard(uid)
        if workdir:
            shutil.rmtree(os.path.dirname(workdir), ignore_errors=True)

    def _handle(self, proc: asyncio.subprocess.Process, uid: int | None, workdir: str | None) -> WorkerHandle:
        async def kill() -> None:
            await self._kill(proc, uid, workdir)

        async def exit_code() -> int | None:
            return await proc.wait()

        assert proc.stdout is not None and proc.stdin is not None
        cap = self.config.max_output_chars
        return WorkerHandle(proc.stdout, proc.stdin, kill, exit_code, max_frame=24 * cap + (1 << 20),
                            label=f"pid {proc.pid} ({self.mode})", alive=lambda: proc.returncode is None)

    async def _kill(self, proc: asyncio.subprocess.Process, uid: int | None, workdir: str | None) -> None:
        # The worker leads its own process group (start_new_session). Not proc.kill(): Popen polls
        # first, which can reap the child behind asyncio's child watcher.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            async with asyncio.timeout(KILL_WAIT_S):  # never hang a session's close on a lost exit status
                await proc.wait()
        except TimeoutError:
            log.warning("sandbox worker pid %d did not report its exit %g s after SIGKILL", proc.pid, KILL_WAIT_S)
        if uid is not None:
            await asyncio.to_thread(_kill_uid, uid)
        await asyncio.to_thread(self._release, uid, workdir)

    def _allocate_uid(self) -> int | None:
        assert self.layers is not None
        if not self.layers.root:
            return None
        while (uid := UID_BASE + random.randrange(UID_SPAN)) in self._uids:
            continue
        self._uids.add(uid)
        return uid

    def _demote(self, uid: int | None) -> list[str]:
        """Drop to ``uid`` through setpriv: with ``Popen(user=...)`` Python must fork() the whole
        (large) parent on the event loop thread; without it, it can vfork()."""
        if uid is None:
            return []
        return [self._setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]

    def _host_workdir(self, uid: int | None) -> str | None:
        """bwrap and unshare give the worker a private tmpfs /tmp; ``none`` needs a host directory:
        ``work`` inside a root-owned 0711 dir, so the worker cannot rename it away or plant a link."""
        if self.mode != "none":
            return None
        parent = tempfile.mkdtemp(prefix="splice-sandbox-")
        os.chmod(parent, 0o711)
        path = os.path.join(parent, "work")
        os.mkdir(path, 0o700)
        if uid is not None:
            os.chown(path, uid, uid)
        return path

    def _env(self, workdir: str | None) -> dict[str, str]:
        home = workdir or "/tmp"
        env = {"PATH": SAFE_PATH, "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8"}
        if self.mode != "bwrap" and self.shared != self.prefix:  # RUNPATH points into the unreachable original
            env["LD_LIBRARY_PATH"] = os.path.join(self.shared, "lib")
        return env

    def _python_argv(self, outside: bool = False) -> list[str]:
        """Inside bwrap the interpreter sits at its own path; outside, the shared copy is used."""
        python = os.path.realpath(self.python)
        if outside and self.shared != self.prefix:
            python = self.shared + python[len(self.prefix):]
        flags = ["-I"] if self.config.site_packages else ["-I", "-S"]
        return [python, *flags, "-c", BOOTSTRAP if self._same_python else worker_source()]

    @property
    def _same_python(self) -> bool:
        """The default interpreter is this one's base: it can run our precompiled worker code."""
        return not self.config.python

    def _seccomp_fd(self) -> int | None:
        """bwrap installs the filter itself from an fd (so the worker needs no ctypes at start)."""
        bpf = seccomp_bpf() if self.config.seccomp else None
        if self.mode != "bwrap" or bpf is None:
            return None
        fd = os.memfd_create("splice-seccomp")
        os.write(fd, bpf)
        os.lseek(fd, 0, os.SEEK_SET)
        return fd

    def _command(self, workdir: str | None, bpf_fd: int | None) -> list[str]:
        assert self.layers is not None
        if self.mode == "bwrap":
            seccomp = [] if bpf_fd is None else ["--seccomp", str(bpf_fd)]
            return [self.layers.bwrap or "bwrap", *self._bwrap_args(), *seccomp, "--", *self._python_argv()]
        if self.mode == "unshare":
            return [self.layers.unshare or "unshare", "--user", "--map-root-user", "--net", "--pid", "--ipc",
                    "--uts", "--mount", "--fork", "--kill-child", "--mount-proc", "--",
                    *self._python_argv(outside=True)]
        return self._python_argv(outside=True)

    def _bwrap_args(self) -> list[str]:
        args = ["--die-with-parent", "--new-session", "--unshare-all", "--unshare-user", "--disable-userns",
                "--cap-drop", "ALL", "--hostname", "sandbox", "--clearenv"]
        for key, value in self._env(None).items():
            args += ["--setenv", key, value]
        args += ["--ro-bind", "/usr", "/usr"]
        for top in ("/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32"):
            if os.path.islink(top):
                args += ["--symlink", os.readlink(top), top]
            elif os.path.isdir(top):
                args += ["--ro-bind", top, top]
        for path in ETC_FILES:
            args += ["--ro-bind-try", path, path]
        if self.prefix != "/usr" and not self.prefix.startswith("/usr/"):
            args += ["--ro-bind", self.shared, self.prefix]
        size = str(self.config.tmp_size_mb * 1024 * 1024)
        args += ["--proc", "/proc", "--dev", "/dev", "--size", size, "--tmpfs", "/tmp",
                 "--size", size, "--tmpfs", "/dev/shm", "--remount-ro", "/", "--chdir", "/tmp"]
        return args

    def _worker_config(self, workdir: str | None) -> dict[str, Any]:
        assert self.layers is not None
        bpf = seccomp_bpf() if self.config.seccomp and self.mode != "bwrap" else None  # bwrap: --seccomp
        own_pid_ns = self.mode in ("bwrap", "unshare")
        return {"limits": self.config.limits(), "workdir": workdir or "/tmp",
                "seccomp": base64.b64encode(bpf).decode() if bpf else None,
                "reap": "all" if own_pid_ns or self.layers.root else "tree",
                "max_output_bytes": self.config.max_output_chars,
                "new_session": self.mode == "unshare", "masks": self.masks,
                "tmpfs_bytes": self.config.tmp_size_mb * 1024 * 1024}


async def _read_some(stream: asyncio.StreamReader | None, limit: int = 2000) -> str:
    if stream is None:
        return ""
    try:
        async with asyncio.timeout(1.0):
            return (await stream.read(limit)).decode(errors="replace")
    except TimeoutError:
        return ""


def _kill_uid(uid: int) -> None:
    """SIGKILL every host process still running as ``uid`` (a worker's private uid)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid == uid:
                os.kill(int(entry), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            continue
