"""Functional tests of the sandbox: real workers, no mocks."""

from __future__ import annotations

import asyncio
import contextlib
import glob
import warnings

import pytest

from agent.errors import ConfigError, SandboxError
from sandbox import ExecResult, Sandbox, SandboxConfig, SandboxDegraded, WorkerPool, layers
from sandbox.channel import worker_source

# Functional tests: a host that lacks an isolation layer still runs them (the warning is the
# documented behaviour; the security suite does NOT ignore it).
pytestmark = pytest.mark.filterwarnings("ignore::sandbox.layers.SandboxDegraded")
FAST = {"timeout_s": 2.0, "kill_grace_s": 0.5}


async def test_state_persists_across_runs():
    async with Sandbox(backend="process", timeout_s=5, memory_mb=512) as box:
        assert (await box.run("x = 21")).to_text() == "(no output)"
        r = await box.run("print(x * 2)")
        assert (r.stdout, r.stderr, r.error, r.timed_out) == ("42\n", "", None, False)
        assert 0 < r.duration_s < 1
        await box.run("import math\ndef f(n):\n    return math.factorial(n)\nopen('notes.txt', 'w').write('hi')")
        assert (await box.run("print(f(5), open('notes.txt').read())")).stdout == "120 hi\n"


async def test_trailing_expression_is_echoed_like_a_repl():
    async with Sandbox(**FAST) as box:
        assert (await box.run("y = [3, 1, 2]\nsorted(y)")).stdout == "[1, 2, 3]\n"
        assert (await box.run("'text'")).stdout == "'text'\n"
        assert (await box.run("None")).stdout == ""
        assert (await box.run("print('a')")).stdout == "a\n"  # print's None is not echoed


async def test_exception_becomes_short_error_text():
    async with Sandbox(**FAST) as box:
        r = await box.run("def g():\n    return 1 / 0\n\nprint('before')\ng()")
        assert r.stdout == "before\n"
        assert r.error.startswith("Traceback (most recent call last):")
        assert "ZeroDivisionError: division by zero" in r.error
        assert 'File "<cell-1>", line 2, in g' in r.error and "return 1 / 0" in r.error
        assert "_worker" not in r.error and "<string>" not in r.error  # no worker frames
        assert r.to_text() == "before\n" + r.error
        assert (await box.run("print('still alive')")).stdout == "still alive\n"


async def test_syntax_error_and_system_exit():
    async with Sandbox(**FAST) as box:
        r = await box.run("x = = 1")
        assert "SyntaxError" in r.error and "<cell-1>" in r.error
        assert (await box.run("raise SystemExit(3)")).error == "SystemExit: 3"
        assert (await box.run("import sys; sys.exit(0)")).error is None
        assert (await box.run("print(1)")).stdout == "1\n"


async def test_stderr_and_subprocess_output_are_captured():
    async with Sandbox(**FAST) as box:
        r = await box.run("import sys, os, subprocess\nprint('out')\nprint('err', file=sys.stderr)\n"
                          "os.write(1, b'raw\\n')\n_ = subprocess.run(['echo', 'child'])")
        assert r.stdout.split() == ["out", "raw", "child"]
        assert r.stderr == "err\n"
        assert r.to_text() == "out\nraw\nchild\nerr"


async def test_timeout_interrupts_and_keeps_state():
    async with Sandbox(timeout_s=1, kill_grace_s=1) as box:
        await box.run("kept = 'yes'")
        r = await box.run("import time\nprint('started')\ntime.sleep(60)")
        assert r.timed_out and r.error == "timed out after 1 s" and not r.restarted
        assert r.stdout == "started\n"
        assert (await box.run("kept")).stdout == "'yes'\n"


async def test_timeout_kill_restarts_a_fresh_session():
    async with Sandbox(timeout_s=1, kill_grace_s=0.5) as box:
        await box.run("kept = 1")
        r = await box.run("import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\nwhile True: pass")
        assert r.timed_out and r.restarted
        assert r.error.startswith("timed out after 1 s and was killed") and "are lost" in r.error
        assert 1.4 < r.duration_s < 5
        r = await box.run("kept")
        assert "NameError" in r.error  # documented: state is lost after a kill
        assert (await box.run("print('fresh')")).stdout == "fresh\n"


async def test_crash_restarts_with_reason():
    async with Sandbox(**FAST) as box:
        r = await box.run("import os\nos._exit(7)")
        assert r.restarted and "exited with code 7" in r.error
        assert (await box.run("print(2)")).stdout == "2\n"


async def test_output_is_capped_head_and_tail():
    async with Sandbox(max_output_chars=1000, **FAST) as box:
        r = await box.run("for i in range(20000): print(i)")
        assert r.truncated and r.error is None
        assert r.stdout.startswith("0\n1\n2\n") and r.stdout.endswith("19999\n")
        assert "output truncated" in r.stdout and len(r.stdout) < 1100
        assert "output truncated" in r.to_text()
        small = await box.run("print('ok')")
        assert (small.stdout, small.truncated) == ("ok\n", False)


async def test_memory_limit_is_an_error_not_a_crash():
    async with Sandbox(memory_mb=256, **FAST) as box:
        r = await box.run("x = bytearray(1024 ** 3)")
        assert r.error == "MemoryError: memory limit 256 MB exceeded"
        assert (await box.run("y = bytearray(10 * 1024 ** 2); len(y)")).stdout == "10485760\n"


async def test_pool_prestarts_and_never_reuses_a_worker():
    async with WorkerPool(pool_size=2, **FAST) as pool:
        await pool.wait_ready()
        assert pool.ready == 2
        async with Sandbox(pool=pool) as a:
            await a.run("import os; secret = 'a'; open('a.txt', 'w').write('a')")
            pid_a = (await a.run("os.getpid()")).stdout
        async with Sandbox(pool=pool) as b:
            r = await b.run("import os; print('secret' in globals(), os.path.exists('a.txt'))")
            assert r.stdout == "False False\n"
        await pool.wait_ready()
        assert pool.ready == 2 and pid_a  # refilled after each acquire
    assert pool.ready == 0


async def test_concurrent_sessions_are_independent():
    async with WorkerPool(pool_size=2, **FAST) as pool:
        async def session(i: int) -> list[str]:
            async with Sandbox(pool=pool) as box:
                await box.run(f"n = {i}")
                return [(await box.run("n * 10")).stdout for _ in range(5)]

        results = await asyncio.gather(*(session(i) for i in range(6)))
    assert results == [[f"{i * 10}\n"] * 5 for i in range(6)]


async def test_cancelled_run_kills_the_worker_and_next_run_works():
    async with Sandbox(timeout_s=30) as box:
        await box.run("v = 1")
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await box.run("import time; time.sleep(20)")
        r = await box.run("print('next')")  # a fresh worker: the old one was out of step
        assert r.stdout == "next\n"


async def test_closed_sandbox_raises_and_close_is_idempotent():
    box = Sandbox(**FAST)
    await box.run("1")
    await box.aclose()
    await box.aclose()
    with pytest.raises(SandboxError):
        await box.run("1")


async def test_no_stray_tasks_after_close():
    before = asyncio.all_tasks()
    async with WorkerPool(pool_size=1, **FAST) as pool, Sandbox(pool=pool) as box:
        await box.run("1")
    assert asyncio.all_tasks() == before


def test_config_validation_messages_say_how_to_fix():
    with pytest.raises(ConfigError, match="use one of process, docker"):
        SandboxConfig(backend="vm")
    with pytest.raises(ConfigError, match="timeout_s must be > 0"):
        SandboxConfig(timeout_s=0)
    with pytest.raises(ConfigError, match="too small"):
        SandboxConfig(memory_mb=8)
    with pytest.raises(TypeError):
        Sandbox(SandboxConfig(), timeout_s=1)


def test_exec_result_text():
    assert ExecResult().to_text() == "(no output)"
    assert ExecResult(stdout="1\n", error="ValueError: x").to_text() == "1\nValueError: x"
    raw = {"stdout": {"head": "ab", "tail": "yz", "cut": 10}, "stderr": None, "error": None}
    r = ExecResult.from_worker(raw, 0.1, max_chars=100)
    assert r.truncated and r.stdout == "ab\n[... output truncated: 10 bytes cut ...]\nyz"


def test_worker_is_standard_library_only():
    import ast

    imported = {n.names[0].name.split(".")[0] for n in ast.walk(ast.parse(worker_source()))
                if isinstance(n, ast.Import)}
    assert not imported & {"sandbox", "agent", "tools", "pyseccomp", "docker"}


async def test_degraded_isolation_warns_once_and_still_runs(monkeypatch):
    layers._warn_once.cache_clear()
    box = Sandbox(isolation="unshare", allow_weak_isolation=True, **FAST)
    with pytest.warns(SandboxDegraded, match="bubblewrap unavailable"):
        await box.start()
    r = await box.run("import os\npids = [p for p in os.listdir('/proc') if p.isdigit()]\n"
                      "print(os.path.exists('/proc/1/environ'), len(pids) < 10)")
    await box.aclose()
    assert r.stdout == "True True\n"  # own pid namespace: few pids
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        async with Sandbox(isolation="unshare", allow_weak_isolation=True, **FAST) as box:  # no second warning
            assert (await box.run("1 + 1")).stdout == "2\n"
    layers._warn_once.cache_clear()


@pytest.mark.docker
async def test_docker_backend_state_timeout_and_limits(docker_host):
    cfg = SandboxConfig(backend="docker", image="splice-sandbox:test", docker_host=docker_host, pool_size=1,
                        **FAST)
    async with WorkerPool(cfg) as pool, Sandbox(pool=pool) as box:
        await box.run("x = 21")
        assert (await box.run("print(x * 2)")).stdout == "42\n"
        r = await box.run("import os; os.getuid(), os.getcwd()")
        assert r.stdout == "(65534, '/tmp')\n"
        r = await box.run("import time; time.sleep(30)")
        assert r.timed_out and not r.restarted
        r = await box.run("import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\nwhile True: pass")
        assert r.restarted
        assert (await box.run("print('fresh')")).stdout == "fresh\n"


@pytest.fixture(scope="module")
def docker_host(request, tmp_path_factory):
    from conftest_sandbox import engine_host

    return engine_host(request.config, tmp_path_factory)


async def test_worker_that_cannot_lock_down_is_a_sandbox_error():
    with pytest.raises(SandboxError, match="failed to start.*ValueError"):
        async with Sandbox(max_open_files=10**9, **FAST) as box:  # above the hard limit: setrlimit fails
            await box.run("1")


@pytest.mark.parametrize("mode", ["none", "unshare", "bwrap"])
async def test_cancelled_starts_and_runs_leave_no_dirs_or_uids(mode):
    """Cancel at every stage of a worker's start and of a run (isolation=none has host work dirs)."""
    before = set(glob.glob("/tmp/splice-sandbox-*"))
    pool = WorkerPool(isolation=mode, allow_weak_isolation=True, pool_size=0, **FAST)
    try:
        for delay in [i * 0.0003 for i in range(40)] + [0.03, 0.06, 0.2]:
            box = Sandbox(pool=pool)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await box.run("import time; time.sleep(5)")
            await box.aclose()
    finally:
        await pool.aclose()
    assert set(glob.glob("/tmp/splice-sandbox-*")) - before == set()
    assert pool.backend._uids == set()


async def test_lone_surrogates_from_code_become_encodable_text():
    async with Sandbox(**FAST) as box:
        r = await box.run("print('out ' + chr(0xdc80))\nraise ValueError('bad ' + chr(0xd800))")
    assert "ValueError: bad \ufffd" in r.error and r.stdout.startswith("out ")
    r.to_text().encode("utf-8")


def test_forged_frame_fields_are_capped_and_cleaned_on_the_host():
    raw = {"stdout": {"head": "x" * 50_000, "tail": "y" * 50_000, "cut": "lots"}, "stderr": {"head": "e\ud800"},
           "error": ["\udfff"], "timed_out": "yes"}
    r = ExecResult.from_worker(raw, 0.1, max_chars=300)
    assert r.truncated and r.stdout.startswith("x" * 200) and r.stdout.endswith("y" * 100)
    assert len(r.stdout) < 400 and "99700 bytes cut" in r.stdout
    assert (r.stderr, r.error, r.timed_out) == ("e\ufffd", "['\\udfff']", False)  # a list's repr escapes it


async def test_cancelled_worker_start_releases_its_dir_and_uid():
    """The backend cleans up after itself too, not only behind the pool's shield."""
    from sandbox.process import ProcessBackend

    before = set(glob.glob("/tmp/splice-sandbox-*"))
    backend = ProcessBackend(SandboxConfig(isolation="none", allow_weak_isolation=True, **FAST))
    await backend.prepare()
    for delay in [i * 0.0003 for i in range(40)]:
        task = asyncio.ensure_future(backend.start_worker())
        await asyncio.sleep(delay)
        task.cancel()
        try:
            await (await task).close()  # it finished before the cancel arrived
        except asyncio.CancelledError:
            pass
    assert set(glob.glob("/tmp/splice-sandbox-*")) - before == set()
    assert backend._uids == set()
