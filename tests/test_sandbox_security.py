"""Hostile programs, one property each, run against every backend that works here.

Each attack runs in a fresh session from a shared pool; the test asserts the specific property
(secret absent, host file unchanged, listener untouched, ...), then that the same session still
answers and that a new session works. Host-side facts (a secret env var, a secret file in the host's
/tmp, TCP and unix listeners, this process's pid) are set up by the ``host`` fixture.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import string
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio

from sandbox import ExecResult, Sandbox, SandboxConfig, WorkerPool

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
    runner_pid: int = field(default_factory=os.getpid)
    connections: list[str] = field(default_factory=list)

    def subst(self) -> dict[str, object]:
        return {"secret_file": self.secret_file, "canary_dir": self.canary_dir, "unix_sock": self.unix_sock,
                "port": self.port, "runner_pid": self.runner_pid, "project": PROJECT, "secret_name": SECRET_NAME}


Check = Callable[[list[ExecResult], Host], None]


@dataclass(frozen=True)
class Attack:
    name: str
    steps: tuple[str, ...]
    check: Check


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
    Attack("modify_python_stdlib", ("import os\nopen(os.__file__, 'a').write('pwned = 1')",),
           error_in("Read-only file system", "Permission denied")),
    Attack("tcp_to_host_listener", (("import socket\ns = socket.create_connection(('127.0.0.1', $port), timeout=1)\n"
                                    "s.sendall(b'pwned')"),),
           error_in("PermissionError", "ConnectionRefused", "Network is unreachable")),
    Attack("tcp_to_internet", ("import socket\nsocket.create_connection(('1.1.1.1', 443), timeout=1)",),
           error_in("PermissionError", "Network is unreachable", "OSError")),
    Attack("dns_lookup", ("import socket\nprint(socket.getaddrinfo('pypi.org', 443))",),
           error_in("gaierror", "PermissionError", "OSError")),
    Attack("udp_send", ("import socket\nsocket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('8.8.8.8', 53))",),
           error_in("PermissionError", "Network is unreachable")),
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
    Attack("setuid_root", ("import os\nos.setuid(0)",), error_in("PermissionError", "Invalid argument")),
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
           (("import json, os, struct\nbody = json.dumps({'stdout': {'head': 'FORGED', 'tail': '', 'cut': 0}, "
            "'error': None, 'seq': -1}).encode()\nfor fd in range(3, 40):\n    try:\n"
            "        os.write(fd, struct.pack('>I', len(body)) + body)\n    except OSError:\n        pass"),),
           holds(lambda r: r.restarted and "FORGED" not in r.stdout)),
]


def engines() -> list:
    return ["process", pytest.param("docker", marks=pytest.mark.docker)]


@pytest.fixture(scope="module", params=engines())
def engine(request, tmp_path_factory) -> dict[str, object]:
    if request.param == "process":
        yield {"backend": "process"}
        return
    from conftest_sandbox import TEST_IMAGE, podman_service

    with podman_service(tmp_path_factory.mktemp("podman")) as docker_host:
        yield {"backend": "docker", "docker_host": docker_host, "image": TEST_IMAGE}


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

    tcp = await asyncio.start_server(record, "127.0.0.1", 0)
    unix = await asyncio.start_unix_server(record, str(facts.unix_sock))
    facts.port = tcp.sockets[0].getsockname()[1]
    yield facts
    for server in (tcp, unix):
        server.close()
        await server.wait_closed()
    del os.environ[SECRET_NAME]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pool(engine, host):
    async with WorkerPool(SandboxConfig(**LIMITS, **engine)) as p:  # started after the secret is set
        yield p


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.name for a in ATTACKS])
async def test_attack_is_contained(pool: WorkerPool, host: Host, attack: Attack):
    subst = host.subst()
    async with Sandbox(pool=pool) as box:
        results = [await box.run(string.Template(step).safe_substitute(subst)) for step in attack.steps]
        attack.check(results, host)
        assert host.secret not in text(results)
        assert (await box.run("print('alive')")).stdout == "alive\n"  # the session recovers
    async with Sandbox(pool=pool) as fresh:
        assert (await fresh.run("print(6 * 7)")).stdout == "42\n"  # and a new session works
    assert host.connections == []
    os.kill(host.runner_pid, 0)


async def test_there_are_at_least_30_attacks():
    assert len(ATTACKS) >= 30 and len({a.name for a in ATTACKS}) == len(ATTACKS)


async def test_sessions_cannot_see_each_other(pool: WorkerPool, host: Host):
    async with Sandbox(pool=pool) as a, Sandbox(pool=pool) as b:
        await a.run("import os\nmarker = 'session-a-secret'\nopen('a.txt', 'w').write(marker)\n"
                    "import subprocess, sys\np = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])")
        r = await b.run(PROC_SCAN.replace("$secret_name", "session-a-secret") +
                        "print('marker' in globals(), 'a.txt' in str(list(os.walk('/tmp'))))")
        assert r.stdout.split()[1:] == ["False", "False", "False", "False"], r.to_text()
