"""Hostile programs, one property each, run against every mode the code can select.

Modes: ``bwrap`` (the default), the weaker ``unshare`` and ``none`` fallbacks (only with
``allow_weak_isolation``: without it they refuse to start, tested below), and ``docker``. Each attack
runs in a fresh session from a shared pool; the test asserts the specific property (secret absent,
host file unchanged, listener untouched, ...), then that the same session still answers and that a
new session works. The attacks a weak mode is documented not to contain (``process.WEAK_GAPS``) are
strict xfails there: if one starts passing, the list (and the docs) must shrink. Host-side facts (a
secret env var, a secret file in the host's /tmp, TCP, UDP, unix and abstract unix listeners, the
host's network namespace, this process's pid) are set up by the ``host`` fixture. The network attacks
assert isolation itself (host listeners on loopback see nothing; the network namespace is not the
host's), so they mean the same on an offline host; they also run with seccomp off, so a missing
network namespace cannot hide behind the socket filter.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import string
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio

from agent.errors import SandboxError
from sandbox import ExecResult, Sandbox, SandboxConfig, SandboxDegraded, WorkerPool
from sandbox.layers import HostLayers
from sandbox.process import ProcessBackend

pytestmark = pytest.mark.asyncio(loop_scope="module")

PROJECT = Path(__file__).resolve().parents[1]
SECRET_NAME = "SPLICE_SANDBOX_TEST_SECRET"
LIMITS = {"timeout_s": 2.0, "kill_grace_s": 0.5, "memory_mb": 256, "max_processes": 32, "file_size_mb": 16,
              "tmp_size_mb": 64, "max_output_chars": 2000, "max_open_files": 128, "pool_size": 2}


@dataclass
class Host:
    secret: str
    secret_file: Path
    canary_dir: Path
    unix_sock: Path
    port: int
    tag: str = field(default_factory=lambda: f"splice-attack-{uuid.uuid4().hex[:12]}")
    udp_port: int = 0
    runner_pid: int = field(default_factory=os.getpid)
    netns: str = field(default_factory=lambda: os.readlink("/proc/self/ns/net"))
    connections: list[str] = field(default_factory=list)

    @property
    def abstract(self) -> str:
        return "\0" + self.tag

    def subst(self) -> dict[str, object]:
        return {"secret_file": self.secret_file, "canary_dir": self.canary_dir, "unix_sock": self.unix_sock,
                "port": self.port, "udp_port": self.udp_port, "runner_pid": self.runner_pid, "project": PROJECT,
                "secret_name": SECRET_NAME, "tag": self.tag}


Check = Callable[[list[ExecResult], Host], None]


@dataclass(frozen=True)
class Attack:
    name: str
    steps: tuple[str, ...]
    check: Check
    after: Check | None = None  # checked on the host once the session is closed


def text(rs: list[ExecResult]) -> str:
    return "\n".join(r.to_text() for r in rs)


def secret_absent(rs: list[ExecResult], host: Host) -> None:
    assert host.secret not in text(rs)


def error_in(*needles: str) -> Check:
    def check(rs: list[ExecResult], host: Host) -> None:
        assert host.secret not in text(rs)
        assert rs[0].error and any(n in rs[0].error for n in needles), rs[0].to_text()
    return check


def out_is(expected: str, step: int = -1) -> Check:
    def check(rs: list[ExecResult], host: Host) -> None:
        assert rs[step].stdout == expected, rs[step].to_text()
    return check


def timed_out(restarted: bool | None = None) -> Check:
    def check(rs: list[ExecResult], host: Host) -> None:
        assert rs[0].timed_out, rs[0].to_text()
        assert restarted is None or rs[0].restarted is restarted
    return check


def restarted_with(*needles: str) -> Check:
    def check(rs: list[ExecResult], host: Host) -> None:
        assert rs[0].restarted and any(n in (rs[0].error or "") for n in needles), rs[0].to_text()
    return check


def holds(predicate: Callable[[ExecResult], bool]) -> Check:
    def check(rs: list[ExecResult], host: Host) -> None:
        assert predicate(rs[0]), rs[0].to_text()
    return check


def all_of(*checks: Check) -> Check:
    def check(rs: list[ExecResult], host: Host) -> None:
        for c in checks:
            c(rs, host)
    return check


def no_host_root_entries(rs: list[ExecResult], host: Host) -> None:
    leaked = [n for n in os.listdir("/root") if n != ".pyenv" and repr(n) in text(rs)]
    assert not leaked, leaked


def project_untouched(rs: list[ExecResult], host: Host) -> None:
    assert 'name = "splice"' not in text(rs)
    assert hashlib.sha256((PROJECT / "pyproject.toml").read_bytes()).hexdigest() == PYPROJECT_SHA


def nothing_written(rs: list[ExecResult], host: Host) -> None:
    targets = [host.canary_dir / "pwned", PROJECT / "pwned", Path("/usr/pwned"), Path("/etc/pwned"),
               Path("/root/pwned"), Path("/pwned"), host.secret_file]
    assert [p for p in targets[:-1] if p.exists()] == []
    assert host.secret_file.read_text() == host.secret
    assert rs[0].stdout.count("denied") == len(WRITE_TARGETS), rs[0].to_text()


def survives(rs: list[ExecResult], host: Host) -> None:
    os.kill(host.runner_pid, 0)  # the test runner is alive; the generic checks cover the rest


def output_bounded(rs: list[ExecResult], host: Host) -> None:
    r = rs[0]
    assert r.truncated and len(r.stdout) <= LIMITS["max_output_chars"] + 100, len(r.stdout)


def own_network_namespace(rs: list[ExecResult], host: Host) -> None:
    netns, devices = rs[0].stdout.splitlines()
    assert netns.startswith("net:[") and netns != host.netns, (netns, host.netns)
    assert devices == "['lo']", devices


def nothing_on_host_tmp(rs: list[ExecResult], host: Host) -> None:
    leaked = [str(p) for d in ("/tmp", "/var/tmp", "/dev/shm") for p in Path(d).glob(host.tag + "*")]
    assert leaked == [], leaked


def _remove_leftovers(host: Host) -> None:
    import shutil

    for d in ("/tmp", "/var/tmp", "/dev/shm"):
        for p in Path(d).glob(host.tag + "*"):
            if p.is_symlink() or not p.is_dir():
                p.unlink()
            else:
                shutil.rmtree(p)


def work_dir_gone(rs: list[ExecResult], host: Host) -> None:
    nothing_on_host_tmp(rs, host)
    cwd = rs[0].stdout.splitlines()[0]
    if cwd.startswith("/tmp/splice-sandbox-"):  # a host work dir (mode none): it and its parent are gone
        assert not Path(cwd).parent.exists(), cwd


def forged_output_capped(rs: list[ExecResult], host: Host) -> None:
    r = rs[0]
    assert "FORGED" in r.stdout, r.to_text()[:300]  # the forged frame was accepted as the result ...
    assert len(r.stdout) <= LIMITS["max_output_chars"] + 100, len(r.stdout)  # ... but capped on the host
    assert r.truncated


def encodable(rs: list[ExecResult], host: Host) -> None:
    for r in rs:
        r.to_text().encode("utf-8")  # no lone surrogate survives into the result


PYPROJECT_SHA = hashlib.sha256((PROJECT / "pyproject.toml").read_bytes()).hexdigest()
WRITE_TARGETS = ("$canary_dir/pwned", "$project/pwned", "/usr/pwned", "/etc/pwned", "/root/pwned", "/pwned",
                 "$secret_file")
WRITE_CODE = ("for p in " + repr(list(WRITE_TARGETS)) + ":\n    try:\n        open(p, 'w').write('x')\n"
              "        print('WROTE', p)\n    except OSError as e:\n        print('denied', type(e).__name__)")
PROC_SCAN = """
import os
seen = []
for pid in [p for p in os.listdir('/proc') if p.isdigit()]:
    for part in ('environ', 'cmdline'):
        try:
            seen.append(open(f'/proc/{pid}/{part}', 'rb').read().decode(errors='replace'))
        except OSError:
            pass
blob = '\\n'.join(seen)
print(len(seen), 'pytest' in blob, '$secret_name' in blob)
"""
WALK = """
import os
hits = []
for root, dirs, files in os.walk('/'):
    dirs[:] = [d for d in dirs if os.path.join(root, d) not in ('/proc', '/sys', '/dev', '/usr', '/root/.pyenv', '/opt')]
    for f in files:
        try:
            if open(os.path.join(root, f), 'rb').read(1 << 20).find(b'splice-test-secret') >= 0:
                hits.append(os.path.join(root, f))
        except OSError:
            pass
print('hits', hits)
"""
CTYPES = "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
RESYNC = "'resync'"  # after an accepted forged reply the real one is out of step: this run restarts
FORGE = ("import json, os, struct\nbody = {body}\nfor fd in range(3, 40):\n    try:\n"
         "        os.write(fd, struct.pack('>I', len(body)) + body)\n    except OSError:\n        pass")
HOST_TMP_WRITES = """
import os
for d in ('/tmp', '/var/tmp', '/dev/shm'):
    try:
        open(f'{d}/$tag', 'w').write('x'); print('wrote', d)
    except OSError as e:
        print('denied', d, type(e).__name__)
"""
RENAME_WORK_DIR = """
import os
cwd = os.getcwd()
print(cwd)
for step in (lambda: os.rename(cwd, '/tmp/$tag-moved'), lambda: os.symlink('/etc', '/tmp/$tag-link')):
    try:
        step(); print('done')
    except OSError as e:
        print('denied', type(e).__name__)
"""

ATTACKS = [
    Attack("read_etc_shadow", ("print(open('/etc/shadow').read())",),
           error_in("FileNotFoundError", "PermissionError")),
    Attack("list_and_read_host_root_home",
           (("import os\nfor n in os.listdir('/root'):\n    print(repr(n))\n"
            "    try: print(open('/root/' + n).read()[:200])\n    except OSError: pass"),),
           no_host_root_entries),
    Attack("read_secret_file_in_host_tmp", ("print(open('$secret_file').read())",),
           error_in("FileNotFoundError", "PermissionError")),
    Attack("read_project_files", ("import os\nprint(os.listdir('$project'))\nprint(open('$project/pyproject.toml').read())",),
           all_of(error_in("FileNotFoundError", "PermissionError"), project_untouched)),
    Attack("walk_filesystem_for_secret", (WALK,), all_of(secret_absent, out_is("hits []\n"))),
    Attack("write_outside_work_dir", (WRITE_CODE,), nothing_written),
    Attack("write_host_temp_dirs", (HOST_TMP_WRITES,), nothing_on_host_tmp, after=nothing_on_host_tmp),
    Attack("rename_work_dir_away", (RENAME_WORK_DIR,), nothing_on_host_tmp, after=work_dir_gone),
    Attack("modify_python_stdlib", ("import os\nopen(os.__file__, 'a').write('pwned = 1')",),
           error_in("Read-only file system", "Permission denied")),
    # Network: host listeners on loopback record every contact (checked after every attack).
    Attack("tcp_to_host_listener", (("import socket\ns = socket.create_connection(('127.0.0.1', $port), timeout=1)\n"
                                    "s.sendall(b'pwned')"),),
           error_in("PermissionError", "ConnectionRefused", "Network is unreachable")),
    Attack("udp_to_host_listener",
           (("import socket, time\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "for _ in range(5):\n    s.sendto(b'pwned', ('127.0.0.1', $udp_port)); time.sleep(0.02)"),),
           secret_absent),  # unconnected UDP reports nothing: the listener is the witness
    Attack("abstract_unix_socket_of_host",
           (("import socket\ns = socket.socket(socket.AF_UNIX)\ns.settimeout(1)\ns.connect('\\0$tag')\n"
             "s.sendall(b'pwned'); print('CONNECTED')"),),
           error_in("ConnectionRefused", "FileNotFound", "PermissionError")),
    Attack("own_network_namespace",
           (("import os\nprint(os.readlink('/proc/self/ns/net'))\n"
             "print(sorted(l.split(':')[0].strip() for l in open('/proc/net/dev').readlines()[2:]))"),),
           own_network_namespace),
    Attack("tcp_to_internet", ("import socket\nsocket.create_connection(('1.1.1.1', 443), timeout=1)",),
           error_in("PermissionError", "Network is unreachable")),  # not a timeout: no route at all
    Attack("dns_lookup", ("import socket\nprint(socket.getaddrinfo('pypi.org', 443))",),
           error_in("gaierror", "PermissionError")),
    Attack("raw_packet_socket", ("import socket\nsocket.socket(socket.AF_PACKET, socket.SOCK_RAW)",),
           error_in("PermissionError")),
    Attack("netlink_socket", ("import socket\nsocket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)",),
           error_in("PermissionError")),
    Attack("host_unix_socket", ("import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect('$unix_sock')",),
           error_in("FileNotFoundError", "PermissionError")),
    Attack("container_engine_sockets",
           (("import socket, os\nfor p in ('/var/run/docker.sock', '/run/podman/podman.sock', '/run/docker.sock'):\n"
            "    s = socket.socket(socket.AF_UNIX)\n    try:\n        s.connect(p); print('CONNECTED', p)\n"
            "    except OSError as e:\n        print('no', type(e).__name__)"),),
           out_is("no FileNotFoundError\n" * 3)),
    Attack("fork_bomb", ("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",),
           timed_out()),
    Attack("thread_bomb", (("import threading, time\nfor _ in range(100000):\n"
                           "    threading.Thread(target=time.sleep, args=(30,), daemon=True).start()"),),
           error_in("can't start new thread", "Resource temporarily unavailable", "MemoryError")),
    Attack("memory_bomb", ("a = []\nwhile True:\n    a.append(bytearray(32 * 1024 * 1024))",),
           error_in("MemoryError")),
    Attack("memory_bomb_in_child",
           (("import subprocess, sys\nr = subprocess.run([sys.executable, '-c', 'bytearray(8 * 1024 ** 3)'])\n"
            "print('child exit', r.returncode)"),),
           all_of(out_is("child exit 1\n"), holds(lambda r: "MemoryError" in r.stderr))),
    Attack("cpu_spin", ("while True:\n    pass",), timed_out(restarted=False)),
    Attack("cpu_spin_ignoring_alarm",
           ("import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\nwhile True:\n    pass",),
           timed_out(restarted=True)),
    Attack("alarm_swallowed_by_bare_except",
           ("import time\nwhile True:\n    try:\n        time.sleep(100)\n    except BaseException:\n        pass",),
           timed_out(restarted=True)),
    Attack("sleep_forever", ("import time\ntime.sleep(10 ** 9)",), timed_out(restarted=False)),
    Attack("infinite_output", ("while True:\n    print('x' * 100)",), output_bounded),
    Attack("infinite_output_from_child",
           ("import subprocess, sys\nsubprocess.run([sys.executable, '-c', 'while True: print(\"y\" * 1000)'])",),
           output_bounded),
    Attack("infinite_stderr", ("import sys\nwhile True:\n    sys.stderr.write('e' * 1000)",),
           holds(lambda r: r.truncated and len(r.stderr) <= LIMITS["max_output_chars"] + 100)),
    Attack("kill_parent", ("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nprint('survived')",),
           survives),
    Attack("kill_pid_1", ("import os, signal\nos.kill(1, signal.SIGKILL)\nprint('sent')",), survives),
    Attack("kill_everything_visible", ("import os, signal\nos.kill(-1, signal.SIGKILL)\nprint('sent')",),
           survives),
    Attack("kill_host_test_runner", ("import os, signal\nos.kill($runner_pid, signal.SIGKILL)",),
           error_in("ProcessLookupError", "PermissionError")),
    Attack("ptrace_attach", (CTYPES + "print(libc.ptrace(16, 1, 0, 0), ctypes.get_errno())",),
           out_is("-1 1\n")),
    Attack("proc_environ_of_host_runner", ("print(open('/proc/$runner_pid/environ').read())",),
           error_in("FileNotFoundError", "PermissionError")),
    Attack("proc_cmdline_of_host_runner", ("print(open('/proc/$runner_pid/cmdline').read())",),
           error_in("FileNotFoundError", "PermissionError")),
    Attack("proc_scan_all_processes", (PROC_SCAN,),
           holds(lambda r: r.stdout.split()[1:] == ["False", "False"] and int(r.stdout.split()[0]) < 20)),
    Attack("environment_secrets", ("import os\nprint(dict(os.environ))",),
           all_of(secret_absent, holds(lambda r: SECRET_NAME not in r.stdout))),
    Attack("ctypes_segfault", ("import ctypes\nctypes.string_at(0)",), restarted_with("SIGSEGV")),
    Attack("exception_with_hostile_str",
           ("class E(Exception):\n    def __str__(self):\n        raise E()\nraise E()",),
           holds(lambda r: r.error is not None and "E" in r.error and not r.restarted)),
    Attack("deep_recursion", ("def f(n):\n    return f(n + 1)\nf(0)",), error_in("RecursionError")),
    Attack("c_stack_overflow", ("import sys\nsys.setrecursionlimit(10 ** 8)\ndef f(n):\n    return f(n + 1)\nf(0)",),
           holds(lambda r: r.error is not None)),
    Attack("huge_file", ("open('big.bin', 'wb').write(b'0' * (64 * 1024 * 1024))",), error_in("File too large")),
    Attack("fill_work_dir", ("for i in range(100):\n    open(f'f{i}.bin', 'wb').write(b'0' * (8 * 1024 * 1024))",),
           error_in("No space left on device")),
    Attack("fd_exhaustion", ("fs = [open('/dev/null') for _ in range(100000)]",), error_in("Too many open files")),
    Attack("background_process_is_reaped",
           (("import subprocess, sys\np = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(1000)'])\n"
            "print(p.pid)"),
            "import os\ntry:\n    os.kill(p.pid, 0); print('ALIVE')\nexcept ProcessLookupError:\n    print('gone')"),
           out_is("gone\n")),
    Attack("setsid_daemon_is_reaped",
           (("import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
            "        while True:\n            open('beat', 'a').write('.'); time.sleep(0.05)\n    os._exit(0)\n"
            "time.sleep(0.3)"),
            "import os, time\nn = os.path.getsize('beat'); time.sleep(0.3)\nprint('stopped' if os.path.getsize('beat') == n else 'RUNNING')"),
           out_is("stopped\n")),
    Attack("setuid_root",  # unshare mode already is uid 0 of its own user namespace: no capabilities counts
           ("import os\ntry:\n    os.setuid(0)\nexcept OSError as e:\n    print(type(e).__name__)\n"
            "print(open('/proc/self/status').read().split('CapEff:')[1].split()[0])",),
           holds(lambda r: r.stdout.split()[-1] == "0" * 16 and r.stdout.split()[0] in ("PermissionError", "OSError", "0" * 16))),
    Attack("new_user_namespace", (CTYPES + "print(libc.unshare(0x10000000), ctypes.get_errno())",),
           out_is("-1 1\n")),
    Attack("mount_syscall",
           (CTYPES + "print(libc.mount(b'none', b'/tmp', b'tmpfs', 0, None), ctypes.get_errno())",),
           out_is("-1 1\n")),
    Attack("forge_protocol_frames",
           (("import os\nfor fd in range(3, 40):\n    try:\n        os.write(fd, b'\\xff\\xff\\xff\\xff')\n"
            "    except OSError:\n        pass"),),
           holds(lambda r: r.restarted)),
    Attack("forge_well_formed_result",
           (FORGE.format(body="json.dumps({'stdout': {'head': 'FORGED', 'tail': '', 'cut': 0}, 'seq': -1}).encode()"),),
           holds(lambda r: r.restarted and "FORGED" not in r.stdout)),
    Attack("forge_in_step_result_with_huge_output",  # seq 1: the session's first run; 900 kB < max frame
           (FORGE.format(body="json.dumps({'stdout': {'head': 'FORGED' * 150000, 'tail': '', 'cut': 0}, "
                              "'stderr': {'head': 'E' * 100000}, 'seq': 1}).encode()"), RESYNC),
           all_of(forged_output_capped, holds(lambda r: len(r.stderr) <= LIMITS["max_output_chars"] + 100))),
    Attack("forge_deeply_nested_frame", (FORGE.format(body="b'[' * 200000 + b']' * 200000"),),
           holds(lambda r: r.restarted and "nested too deeply" in (r.error or ""))),
    Attack("forge_lone_surrogates",
           (FORGE.format(body="json.dumps({'stdout': {'head': 'a' + chr(0xd800) + 'b'}, 'error': chr(0xdfff), "
                              "'seq': 1}).encode()"), RESYNC),
           all_of(encodable, holds(lambda r: r.stdout == "a\ufffdb" and r.error == "\ufffd"))),
    Attack("lone_surrogate_in_exception_and_output",
           ("print('out ' + chr(0xdc80))\nraise ValueError('bad ' + chr(0xd800))",),
           all_of(encodable, holds(lambda r: "ValueError: bad" in r.error and r.stdout.startswith("out ")))),
]
NETWORK = ("tcp_to_host_listener", "udp_to_host_listener", "abstract_unix_socket_of_host", "own_network_namespace",
           "tcp_to_internet", "dns_lookup")

# What the weak modes are documented not to contain (sandbox.process.WEAK_GAPS): strict xfails there.
GAPS = {
    "unshare": {"read_project_files", "walk_filesystem_for_secret"},
    "none": {"read_project_files", "walk_filesystem_for_secret", "write_host_temp_dirs", "rename_work_dir_away",
             "abstract_unix_socket_of_host", "own_network_namespace", "proc_cmdline_of_host_runner",
             "proc_scan_all_processes", "fill_work_dir"},
}


def _masked_here(mode: str, attack: str) -> bool:
    """unshare hides the project only when it lies under a dir it masks (a clone in /tmp, say): then
    reading it is contained and the gap does not apply to this checkout."""
    from sandbox.process import READONLY_MASKS, WRITABLE_MASKS

    project = Path(__file__).resolve().parent.parent
    return mode == "unshare" and attack == "read_project_files" and any(
        project.is_relative_to(m) for m in WRITABLE_MASKS + READONLY_MASKS)


MODES: dict[str, dict[str, object]] = {
    "bwrap": {"backend": "process", "isolation": "bwrap"},
    "unshare": {"backend": "process", "isolation": "unshare", "allow_weak_isolation": True},
    "none": {"backend": "process", "isolation": "none", "allow_weak_isolation": True},
}


@pytest.fixture(scope="module", params=[*MODES, pytest.param("docker", marks=pytest.mark.docker)])
def engine(request, tmp_path_factory) -> tuple[str, dict[str, object]]:
    if request.param in MODES:
        return request.param, MODES[request.param]
    from conftest_sandbox import TEST_IMAGE, engine_host

    host = engine_host(request.config, tmp_path_factory)
    return "docker", {"backend": "docker", "docker_host": host, "image": TEST_IMAGE}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def host(tmp_path_factory):
    secret = f"splice-test-secret-{uuid.uuid4().hex}"
    os.environ[SECRET_NAME] = secret
    tmp = tmp_path_factory.mktemp("host")
    (tmp / "secret.txt").write_text(secret)
    facts = Host(secret=secret, secret_file=tmp / "secret.txt", canary_dir=tmp, unix_sock=tmp / "host.sock", port=0)

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        facts.connections.append(repr(writer.get_extra_info("peername")))
        writer.close()

    class Datagrams(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: object) -> None:
            facts.connections.append(f"udp {addr!r}")

    tcp = await asyncio.start_server(record, "127.0.0.1", 0)
    unix = await asyncio.start_unix_server(record, str(facts.unix_sock))
    os.chmod(facts.unix_sock, 0o777)  # reachable by any uid that can see it
    abstract = await asyncio.start_unix_server(record, facts.abstract)
    udp, _ = await asyncio.get_running_loop().create_datagram_endpoint(Datagrams, local_addr=("127.0.0.1", 0))
    facts.port = tcp.sockets[0].getsockname()[1]
    facts.udp_port = udp.get_extra_info("sockname")[1]
    yield facts
    udp.close()
    for left in [p for d in ("/tmp", "/var/tmp", "/dev/shm") for p in Path(d).glob(facts.tag + "*")]:
        left.unlink()  # what the documented gaps of isolation=none wrote on the host
    for server in (tcp, unix, abstract):
        server.close()
        await server.wait_closed()
    del os.environ[SECRET_NAME]


async def started_pool(cfg: SandboxConfig) -> WorkerPool:
    pool = WorkerPool(cfg)
    with warnings.catch_warnings():  # the weak modes warn (tested in test_sandbox.py)
        warnings.simplefilter("ignore", SandboxDegraded)
        await pool.start()
    return pool


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pool(engine, host):
    pool = await started_pool(SandboxConfig(**LIMITS, **engine[1]))  # started after the secret is set
    yield pool
    await pool.aclose()


async def run_attack(pool: WorkerPool, host: Host, attack: Attack) -> None:
    subst = host.subst()
    async with Sandbox(pool=pool) as box:
        results = [await box.run(string.Template(step).safe_substitute(subst)) for step in attack.steps]
        attack.check(results, host)
        assert host.secret not in text(results)
        assert (await box.run("print('alive')")).stdout == "alive\n"  # the session recovers
    if attack.after is not None:
        attack.after(results, host)
    async with Sandbox(pool=pool) as fresh:
        assert (await fresh.run("print(6 * 7)")).stdout == "42\n"  # and a new session works
    assert host.connections == []
    os.kill(host.runner_pid, 0)


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.name for a in ATTACKS])
async def test_attack_is_contained(request, engine, pool: WorkerPool, host: Host, attack: Attack):
    if attack.name in GAPS.get(engine[0], ()) and not _masked_here(engine[0], attack.name):
        request.applymarker(pytest.mark.xfail(strict=True, reason=f"documented gap of isolation={engine[0]}"))
    host.connections.clear()
    _remove_leftovers(host)  # of an earlier mode's documented gap (mode none writes to host /tmp)
    await run_attack(pool, host, attack)


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=["bwrap", "unshare"])
async def pool_without_seccomp(request, host):
    pool = await started_pool(SandboxConfig(**LIMITS, **MODES[request.param], seccomp=False))
    yield pool
    await pool.aclose()


@pytest.mark.parametrize("name", NETWORK)
async def test_network_is_isolated_without_seccomp(pool_without_seccomp: WorkerPool, host: Host, name: str):
    """The namespace alone must contain the network: the socket filter would hide a missing one."""
    host.connections.clear()
    await run_attack(pool_without_seccomp, host, next(a for a in ATTACKS if a.name == name))


@pytest.mark.parametrize("mode", ["unshare", "none"])
async def test_weak_modes_refuse_without_opt_in(mode: str):
    with pytest.raises(SandboxError, match=f"isolation '{mode}' is weaker than bubblewrap.*allow_weak_isolation"):
        async with Sandbox(isolation=mode, timeout_s=2) as box:
            await box.run("1")


@pytest.mark.parametrize(("unshare", "missing"), [("/usr/bin/unshare", "bubblewrap \\(bwrap\\) is not installed"),
                                                  (None, "nor does unshare")])
async def test_auto_without_bubblewrap_refuses_and_names_what_is_missing(monkeypatch, unshare, missing):
    monkeypatch.setenv("PATH", "/nonexistent")  # so the message can tell "not installed" from "broken"
    backend = ProcessBackend(SandboxConfig())
    layers = HostLayers(bwrap=None, unshare=unshare, root=True, seccomp=True)
    with pytest.raises(SandboxError, match=f"{missing}.*allow_weak_isolation=True"):
        backend._choose_mode(layers)
    weak = ProcessBackend(SandboxConfig(allow_weak_isolation=True))
    assert weak._choose_mode(layers) == ("unshare" if unshare else "none")


async def test_there_are_at_least_30_attacks():
    assert len(ATTACKS) >= 30 and len({a.name for a in ATTACKS}) == len(ATTACKS)


async def test_sessions_cannot_see_each_other(engine, pool: WorkerPool, host: Host):
    if engine[0] == "none":
        pytest.skip("isolation=none has no pid namespace: sessions see each other's processes (documented)")
    async with Sandbox(pool=pool) as a, Sandbox(pool=pool) as b:
        await a.run("import os\nmarker = 'session-a-secret'\nopen('a.txt', 'w').write(marker)\n"
                    "import subprocess, sys\np = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])")
        r = await b.run(PROC_SCAN.replace("$secret_name", "session-a-secret") +
                        "print('marker' in globals(), 'a.txt' in str(list(os.walk('/tmp'))))")
        assert r.stdout.split()[1:] == ["False", "False", "False", "False"], r.to_text()
