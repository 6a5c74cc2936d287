"""Which isolation layers this host offers, probed once per process, and the seccomp filter.

A missing layer never fails silently: ``warn_missing`` emits ONE ``SandboxDegraded`` warning per
process and layer, naming what is missing and what that leaves uncontained.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import warnings
from dataclasses import dataclass

__all__ = ["HostLayers", "SandboxDegraded", "probe_host", "seccomp_bpf", "shared_prefix", "warn_missing"]

SHARED_PYTHONS = "/var/cache/splice-sandbox"

# Syscalls sandboxed code has no business making. Denied with EPERM (the process lives on).
DENIED_SYSCALLS = (
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
    "mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "fsopen", "fsconfig",
    "fsmount", "fspick", "mount_setattr", "unshare", "setns", "swapon", "swapoff", "reboot",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "bpf",
    "perf_event_open", "keyctl", "add_key", "request_key", "userfaultfd", "open_by_handle_at",
    "name_to_handle_at", "acct", "quotactl", "syslog", "iopl", "ioperm", "fanotify_init",
    "io_uring_setup", "io_uring_enter", "io_uring_register", "personality",
)
# CLONE_NEWUSER, NEWPID, NEWNET, NEWUTS, NEWIPC, NEWNS, NEWCGROUP
CLONE_NAMESPACE_FLAGS = (0x10000000, 0x20000000, 0x40000000, 0x04000000, 0x08000000, 0x00020000, 0x02000000)


class SandboxDegraded(UserWarning):
    """An isolation layer is unavailable on this host; the sandbox runs with less containment."""


@dataclass(frozen=True)
class HostLayers:
    bwrap: str | None  # path of a working bubblewrap
    unshare: str | None  # path of a working util-linux unshare (user + net + pid namespaces)
    root: bool  # can drop to a per-worker unprivileged uid
    seccomp: bool  # pyseccomp + libseccomp can compile a filter


@functools.cache
def probe_host() -> HostLayers:
    """Probe once per process (blocking, ~10 ms: call it through ``asyncio.to_thread``)."""
    root = os.geteuid() == 0
    return HostLayers(bwrap=_probe_bwrap(root), unshare=_probe_unshare(root), root=root,
                      seccomp=seccomp_bpf() is not None)


def _demote_kwargs(root: bool) -> dict[str, object]:
    return {"user": 65534, "group": 65534, "extra_groups": []} if root else {}


def _probe_bwrap(root: bool) -> str | None:
    path = shutil.which("bwrap")
    if not path:
        return None
    cmd = [path, "--ro-bind", "/", "/", "--unshare-all", "--die-with-parent", "--", "true"]
    return path if _runs(cmd, root) else None


def _probe_unshare(root: bool) -> str | None:
    path = shutil.which("unshare")
    if not path:
        return None
    cmd = [path, "--user", "--map-root-user", "--net", "--pid", "--fork", "--mount-proc", "--", "true"]
    return path if _runs(cmd, root) else None


def _runs(cmd: list[str], root: bool) -> bool:
    try:
        done = subprocess.run(cmd, check=False, capture_output=True, timeout=10, env={}, cwd="/",
                              **_demote_kwargs(root))
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


@functools.cache
def _warn_once(layer: str, message: str) -> None:
    warnings.warn(f"sandbox degraded: {layer} unavailable: {message}", SandboxDegraded, stacklevel=4)


def warn_missing(layer: str, message: str) -> None:
    """One warning per process and layer (the cache forgets it if the warning raised)."""
    _warn_once(layer, message)


@functools.cache
def seccomp_bpf() -> bytes | None:
    """The compiled BPF program (native arch; other arches are killed), or None without pyseccomp."""
    try:
        import pyseccomp as sc
    except (ImportError, OSError):
        return None
    flt = sc.SyscallFilter(sc.ALLOW)
    for name in DENIED_SYSCALLS:
        try:
            flt.add_rule(sc.ERRNO(errno.EPERM), name)
        except (OSError, ValueError, RuntimeError):
            continue  # not a syscall on this architecture
    # Only AF_UNIX sockets: no IP, packet or netlink traffic even if a network namespace is missing.
    flt.add_rule(sc.ERRNO(errno.EACCES), "socket", sc.Arg(0, sc.NE, socket.AF_UNIX))
    # No new namespaces via clone; clone3 passes flags in memory, so make glibc fall back to clone.
    for flag in CLONE_NAMESPACE_FLAGS:
        flt.add_rule(sc.ERRNO(errno.EPERM), "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    flt.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    with tempfile.TemporaryFile() as f:
        flt.export_bpf(f)
        f.seek(0)
        return f.read()


def world_reachable(path: str) -> bool:
    """Can any uid traverse to and read ``path`` (every parent directory o+x, the file o+r)?"""
    parts = os.path.realpath(path).split("/")
    for i in range(2, len(parts) + 1):
        mode = os.stat("/".join(parts[:i]) or "/").st_mode
        need = stat.S_IXOTH if stat.S_ISDIR(mode) else stat.S_IROTH
        if not mode & need:
            return False
    return True


@functools.cache
def shared_prefix(prefix: str) -> str:
    """A copy of a Python install that unprivileged worker uids can read.

    An interpreter under a private directory (pyenv in /root) is unreachable for the worker's uid, and
    bubblewrap, running as that uid, cannot bind it. As root we hard-link the tree once into
    ``/var/cache/splice-sandbox`` (a plain copy across filesystems); the sandbox binds that copy back
    at the original path, so RUNPATH and sys.prefix stay valid. Blocking: call via ``to_thread``.
    """
    if world_reachable(os.path.join(prefix, "bin")) or os.geteuid() != 0:
        return prefix
    site = os.path.join(prefix, "lib")
    key = hashlib.sha256(f"{prefix}:{os.stat(site).st_mtime_ns}".encode()).hexdigest()[:16]
    target = os.path.join(SHARED_PYTHONS, key)
    if os.path.isdir(target):
        return target
    os.makedirs(SHARED_PYTHONS, mode=0o755, exist_ok=True)
    os.chmod(SHARED_PYTHONS, 0o755)
    tmp = tempfile.mkdtemp(dir=SHARED_PYTHONS, prefix=".partial-")
    os.rmdir(tmp)
    done = subprocess.run(["cp", "-al", prefix, tmp], check=False, capture_output=True)
    if done.returncode != 0:
        subprocess.run(["rm", "-rf", tmp], check=False)
        subprocess.run(["cp", "-a", prefix, tmp], check=True, capture_output=True)
    os.chmod(tmp, 0o755)
    try:
        os.rename(tmp, target)
    except OSError:  # another process won the race
        subprocess.run(["rm", "-rf", tmp], check=False)
    return target
