"""The worker: runs INSIDE the sandbox, one per session. Standard library only.

The host starts it as ``python -I -c <this file's source>`` and talks to it over its stdin/stdout
with length-prefixed frames (4-byte big-endian length): ``marshal`` from the host (trusted, and
free to import), JSON from the worker (the host only ever parses JSON from the sandbox):

    host -> worker   {"limits": {...}, "seccomp": "<base64 BPF>" | null, "reap": "all" | "tree", ...}
    worker -> host   {"ready": true, "pid": N}
    host -> worker   {"code": "...", "timeout_s": 5.0}
    worker -> host   {"stdout": ..., "stderr": ..., "error": ..., "timed_out": bool, ...}

Before any user code runs, the worker moves the protocol pipes to private close-on-exec fds and points
fds 0/1/2 at /dev/null and two unlinked files, so ``print``, ``os.write(1, ...)`` and subprocesses all
land in the captured output and never in the protocol stream. It then lowers its rlimits and installs
the seccomp filter the host compiled. Everything here is untrusted once user code has run: the host
treats every frame as data and enforces its own limits (frame size, wall-clock timeout).
"""

import _ast
import _signal as signal  # the signal module imports enum: ~5 ms more per start
import binascii
import builtins
import marshal
import math
import os
import resource
import struct
import sys
import time

# Imports are kept to cheap built-in modules: they are paid on every worker start (json alone pulls
# in re and enum). ctypes, traceback and linecache are imported only when needed.

MAX_FRAME = 64 * 1024 * 1024
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
PR_SET_CHILD_SUBREAPER = 36
PR_CAPBSET_DROP = 24
PR_SET_SECUREBITS = 28
SECBITS_NOROOT_LOCKED = 0x3  # SECBIT_NOROOT | SECBIT_NOROOT_LOCKED: exec as uid 0 grants no capabilities
CAPABILITY_VERSION_3 = 0x20080522
MS_RDONLY, MS_NOSUID, MS_NODEV = 1, 2, 4
SECCOMP_MODE_FILTER = 2


class _Timeout(BaseException):
    """Raised by SIGALRM inside user code; BaseException so ``except Exception`` does not swallow it."""


def read_frame(fd):
    head = _read_exact(fd, 4)
    if head is None:
        return None
    (size,) = struct.unpack(">I", head)
    if size > MAX_FRAME:
        raise ValueError(f"frame of {size} bytes is too large")
    body = _read_exact(fd, size)
    return None if body is None else marshal.loads(body)  # from the host: trusted


def _read_exact(fd, n):
    chunks, got = [], 0
    while got < n:
        chunk = os.read(fd, n - got)
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


JSON_ESCAPES = {i: f"\\u{i:04x}" for i in [*range(0x20), *range(0xD800, 0xE000)]}
JSON_ESCAPES.update({ord('"'): '\\"', ord("\\"): "\\\\"})


def to_json(obj):
    """A minimal JSON encoder (str, int, float, bool, None, dict, list): json costs ~10 ms to import."""
    kind = type(obj)
    if kind is str:
        return '"' + obj.translate(JSON_ESCAPES) + '"'
    if kind is dict:
        return "{" + ",".join(['"' + str(k).translate(JSON_ESCAPES) + '":' + to_json(v)
                               for k, v in obj.items()]) + "}"
    if obj is None:
        return "null"
    if kind is bool:
        return "true" if obj else "false"
    if kind is int or (kind is float and math.isfinite(obj)):
        return repr(obj)
    if kind is list or kind is tuple:
        return "[" + ",".join([to_json(v) for v in obj]) + "]"
    return to_json(str(obj))


def write_frame(fd, obj):
    body = to_json(obj).encode("utf-8")
    data = struct.pack(">I", len(body)) + body
    while data:
        data = data[os.write(fd, data):]


def apply_limits(limits):
    mb = 1024 * 1024
    table = {
        "memory_mb": (resource.RLIMIT_AS, mb),
        "file_size_mb": (resource.RLIMIT_FSIZE, mb),
        "max_processes": (resource.RLIMIT_NPROC, 1),
        "max_open_files": (resource.RLIMIT_NOFILE, 1),
        "cpu_session_s": (resource.RLIMIT_CPU, 1),
    }
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    for key, (which, unit) in table.items():
        value = limits.get(key)
        if value:
            resource.setrlimit(which, (int(value * unit), int(value * unit)))


def install_seccomp(bpf_b64):
    import ctypes

    bpf = binascii.a2b_base64(bpf_b64)

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(bpf, len(bpf))
    prog = SockFprog(len(bpf) // 8, ctypes.addressof(buf))
    ul = ctypes.c_ulong
    if libc.prctl(PR_SET_NO_NEW_PRIVS, ul(1), ul(0), ul(0), ul(0)) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS failed")
    if libc.prctl(PR_SET_SECCOMP, ul(SECCOMP_MODE_FILTER), ctypes.byref(prog), ul(0), ul(0)) != 0:
        raise OSError(ctypes.get_errno(), "seccomp filter could not be installed")


def mask_host_dirs(masks, size):
    """unshare mode: hide host dirs under empty private tmpfs mounts (we are root of our own user and
    mount namespace here), then drop every capability, so neither this code nor anything it execs can
    unmount them again."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for path, writable in masks:
        flags = MS_NOSUID | MS_NODEV | (0 if writable else MS_RDONLY)
        opts = f"size={size if writable else 4096},mode={'1777' if writable else '755'}".encode()
        if libc.mount(b"tmpfs", path.encode(), b"tmpfs", ctypes.c_ulong(flags), opts) != 0:
            raise OSError(ctypes.get_errno(), f"cannot mount a private tmpfs over {path}")
    drop_capabilities(libc, ctypes)


def drop_capabilities(libc, ctypes):
    ul = ctypes.c_ulong
    for cap in range(64):
        if libc.prctl(PR_CAPBSET_DROP, ul(cap), ul(0), ul(0), ul(0)) != 0:
            break  # EINVAL: past the last capability this kernel knows
    if libc.prctl(PR_SET_SECUREBITS, ul(SECBITS_NOROOT_LOCKED), ul(0), ul(0), ul(0)) != 0:
        raise OSError(ctypes.get_errno(), "cannot lock the securebits")
    header = (ctypes.c_uint32 * 2)(CAPABILITY_VERSION_3, 0)
    if libc.capset(header, (ctypes.c_uint32 * 6)()) != 0:
        raise OSError(ctypes.get_errno(), "cannot drop capabilities")


def become_subreaper():
    """Orphans of user code re-parent to the worker, so ``descendants`` finds them all."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    ul = ctypes.c_ulong
    libc.prctl(PR_SET_CHILD_SUBREAPER, ul(1), ul(0), ul(0), ul(0))


class Capture:
    """An anonymous in-memory file (memfd) behind fd 1 or 2, read back and emptied after every run.
    Not on the work dir's tmpfs, so code that fills the disk still gets its output shown."""

    def __init__(self, target_fd):
        fd = os.memfd_create(f"splice-fd{target_fd}", 0)
        os.dup2(fd, target_fd)
        os.close(fd)
        self.fd = target_fd

    def take(self, cap):
        try:
            return self._take(cap)
        except OSError as e:  # user code closed or replaced the fd
            return {"head": f"[output unavailable: {e}]", "tail": "", "cut": 0}

    def _take(self, cap):
        size = os.fstat(self.fd).st_size
        if size <= cap:
            head, tail = os.pread(self.fd, size, 0), b""
        else:
            head = os.pread(self.fd, cap * 2 // 3, 0)
            tail = os.pread(self.fd, cap - cap * 2 // 3, size - (cap - cap * 2 // 3))
        os.ftruncate(self.fd, 0)
        os.lseek(self.fd, 0, os.SEEK_SET)
        return {"head": head.decode("utf-8", "replace"), "tail": tail.decode("utf-8", "replace"),
                "cut": max(0, size - cap)}


def text_stream(fd):
    """Line-buffered text output (like a terminal: prints and child processes interleave in order)."""
    return open(fd, "w", encoding="utf-8", errors="replace", buffering=1, closefd=False)


def flush_or_discard(stream, fd):
    """Flush a stream at the end of a run. If that fails (the file-size limit was hit), flush into
    /dev/null instead, so the stale buffer cannot leak into a later run's output."""
    try:
        stream.flush()
        return
    except (OSError, ValueError):
        pass
    saved, null = os.dup(fd), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, fd)
        stream.flush()
    except (OSError, ValueError):
        pass
    finally:
        os.dup2(saved, fd)
        os.close(saved)
        os.close(null)


def setup_stdio():
    proto_in, proto_out = os.dup(0), os.dup(1)  # os.dup gives close-on-exec fds
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    out, err = Capture(1), Capture(2)
    sys.stdout, sys.stderr = text_stream(1), text_stream(2)
    sys.stdin = open(0, closefd=False)  # noqa: SIM115 - lives as long as the worker
    return proto_in, proto_out, out, err


class Session:
    """The user's namespace and the cell runner."""

    def __init__(self, cfg, out, err):
        self.cfg = cfg
        self.out, self.err = out, err
        self.streams = (sys.stdout, sys.stderr)
        self.ns = {"__name__": "__main__", "__builtins__": builtins}
        self.cells = {}  # cell name -> source, for tracebacks
        self.in_user_code = False

    def run(self, code, timeout_s):
        started = time.monotonic()
        error, timed_out, exc_type = None, False, None
        self._arm(timeout_s)
        try:
            self.in_user_code = True
            try:
                self._execute(code)
            finally:
                self.in_user_code = False
        except _Timeout:
            error, timed_out, exc_type = f"timed out after {timeout_s:g} s", True, "Timeout"
        except SystemExit as e:
            if e.code not in (None, 0):
                error, exc_type = f"SystemExit: {e.code}", "SystemExit"
        except MemoryError:
            limit = self.cfg["limits"].get("memory_mb")
            error, exc_type = f"MemoryError: memory limit {limit} MB exceeded", "MemoryError"
        except BaseException as e:  # noqa: BLE001 - any user exception becomes result text
            error, exc_type = safe_format_error(e, self.cells), type(e).__name__
        finally:
            self._disarm()
        reap(self.cfg.get("reap", "tree"))
        return self._result(error, exc_type, timed_out, time.monotonic() - started)

    def _result(self, error, exc_type, timed_out, duration):
        for fd, stream in enumerate(self.streams, start=1):
            flush_or_discard(stream, fd)
        cap = int(self.cfg.get("max_output_bytes", 20000))
        return {"stdout": self.out.take(cap), "stderr": self.err.take(cap), "error": error,
                "exc_type": exc_type, "timed_out": timed_out, "duration_s": duration}

    def _arm(self, timeout_s):
        def on_alarm(signum, frame):
            if self.in_user_code:  # never interrupt the worker's own bookkeeping
                raise _Timeout()

        signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, timeout_s)
        used = resource.getrusage(resource.RUSAGE_SELF)
        cpu_used = used.ru_utime + used.ru_stime
        _soft, hard = resource.getrlimit(resource.RLIMIT_CPU)
        want = int(cpu_used + timeout_s + 2)
        if hard == resource.RLIM_INFINITY or want <= hard:
            resource.setrlimit(resource.RLIMIT_CPU, (want, hard))

    def _disarm(self):
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)

    def _execute(self, code):
        name = f"<cell-{len(self.cells) + 1}>"
        self.cells[name] = code
        tree = compile(code, name, "exec", _ast.PyCF_ONLY_AST)
        last = tree.body.pop() if tree.body and isinstance(tree.body[-1], _ast.Expr) else None
        exec(compile(tree, name, "exec"), self.ns)  # noqa: S102 - running the code is the point
        if last is not None:
            value = eval(compile(_ast.Expression(last.value), name, "eval"), self.ns)
            if value is not None:
                print(repr(value))


def safe_format_error(exc, cells):
    try:
        return format_error(exc, cells)
    except BaseException:  # noqa: BLE001 - an exception whose __str__ or traceback is hostile
        return f"{type(exc).__name__}: <exception could not be formatted>"


def format_error(exc, cells, max_frames=4):
    """Exception type + message + the last traceback lines of the user's own cells."""
    import linecache
    import traceback

    for name, code in cells.items():  # so tracebacks can quote the user's cells
        linecache.cache[name] = (len(code), None, code.splitlines(True), name)

    te = traceback.TracebackException.from_exception(exc, limit=-max_frames)
    te.stack = traceback.StackSummary.from_list([f for f in te.stack if f.filename.startswith("<cell-")])
    lines = list(te.format())
    if len(lines) == 1 or not te.stack:
        lines = list(te.format_exception_only())
    text = "".join(lines).rstrip()
    return text if len(text) <= 4000 else text[:2000] + "\n...\n" + text[-2000:]


def reap(mode):
    """Kill every process the run left behind, then collect zombies."""
    me = os.getpid()
    if mode == "all":  # only safe in a pid namespace or under a uid used by this session alone
        try:
            os.kill(-1, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    else:
        for pid in descendants(me):
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    for _ in range(2000):
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.001)  # a SIGKILLed child becomes a zombie within microseconds


def descendants(root):
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    stat = f.read().rsplit(b")", 1)[1].split()
                parents[int(entry)] = int(stat[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = [], [root]
    while frontier:
        parent = frontier.pop()
        kids = [p for p, pp in parents.items() if pp == parent]
        found.extend(kids)
        frontier.extend(kids)
    return found


def main():
    cfg = read_frame(0)
    if cfg is None:
        return
    proto_in, proto_out, out, err = setup_stdio()
    try:
        if cfg.get("new_session"):  # so killing "our" process group cannot reach the unshare parent
            os.setsid()
        if cfg.get("masks"):
            mask_host_dirs(cfg["masks"], int(cfg.get("tmpfs_bytes", 1 << 28)))
        os.chdir(cfg.get("workdir") or os.getcwd())
        lock_down(cfg)
    except Exception as e:  # noqa: BLE001 - reported to the host, which raises SandboxError
        write_frame(proto_out, {"ready": False, "error": f"{type(e).__name__}: {e}"})
        return
    write_frame(proto_out, {"ready": True, "pid": os.getpid()})
    serve(Session(cfg, out, err), proto_in, proto_out)


def lock_down(cfg):
    """Everything that must hold before the first line of user code runs."""
    if cfg.get("reap") != "all":
        become_subreaper()
    apply_limits(cfg.get("limits", {}))
    if cfg.get("seccomp"):
        install_seccomp(cfg["seccomp"])


def serve(session, proto_in, proto_out):
    while True:
        req = read_frame(proto_in)
        if req is None:
            return
        result = session.run(req["code"], float(req.get("timeout_s", 5)))
        result["seq"] = req.get("seq")
        write_frame(proto_out, result)


if __name__ == "__main__":
    main()
