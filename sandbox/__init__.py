"""A secure, fast, stateful Python sandbox for model-written code.

    async with Sandbox(backend="process", timeout_s=5, memory_mb=512) as box:
        await box.run("x = 21")
        r = await box.run("print(x * 2)")      # ExecResult(stdout="42\\n", error=None, ...)

Threat model
------------
The code is hostile: written by a model that may have been prompted by an attacker. It runs out of
process, in a persistent worker per session (``process`` backend: namespaces + rlimits + seccomp;
``docker`` backend: a locked-down container). Both backends contain:

* reading host files: only ``/usr``, the interpreter and a few ``/etc`` files are visible, read-only;
  the host's /root, /home, /tmp, the project and its secrets are not mounted (docker: the image only);
* writing outside the private work dir (``/tmp``, a size-capped tmpfs that dies with the session);
* network access: a private network namespace with no interfaces but loopback, and a seccomp rule
  refusing every socket family except AF_UNIX (docker: ``network_mode=none``);
* host processes: a private pid namespace (no /proc snooping of host pids, no signals out), an
  unprivileged per-worker uid, no capabilities, no ptrace / mount / bpf / new namespaces (seccomp);
* host secrets in the environment: the worker starts with a scrubbed environment;
* resource exhaustion: address space (memory_mb), CPU time, file size, process count, open files,
  output size, and a wall-clock timeout that kills the worker's whole process tree; processes the
  code leaves in the background are killed after every run.

Not contained:

* kernel exploits: all backends share the host kernel (seccomp narrows, but does not close, that
  surface). Use a VM (gVisor, Firecracker) for code from truly adversarial users at scale;
* side channels (timing, Spectre-class) and CPU contention with other sessions: the CPU is shared;
* total memory when the code forks: each process may use memory_mb, so the worst case is
  max_processes x memory_mb (docker: the cgroup caps the container at memory_mb + tmp_size_mb + 64 MB);
* the session itself: user code runs inside the worker and can forge or garble its own results.
  The host treats every frame as untrusted data (size-capped, validated) and never executes it;
* anything when an isolation layer is unavailable. Without bubblewrap the process backend refuses to
  start unless ``allow_weak_isolation=True``; then it runs with less containment (docs/sandbox.md says
  what) and says so in ONE ``SandboxDegraded`` warning per missing layer.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sandbox.config import SandboxConfig
    from sandbox.layers import SandboxDegraded
    from sandbox.pool import WorkerPool
    from sandbox.result import ExecResult
    from sandbox.session import Sandbox

__all__ = ["ExecResult", "Sandbox", "SandboxConfig", "SandboxDegraded", "WorkerPool"]

# Loaded on first use: ``sandbox.errors`` holds the root of the project's error tree, so every
# ``import agent`` runs this file, and the sandbox itself is only needed once code runs.
_HOME = {"ExecResult": "sandbox.result", "Sandbox": "sandbox.session", "SandboxConfig": "sandbox.config",
         "SandboxDegraded": "sandbox.layers", "WorkerPool": "sandbox.pool"}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'sandbox' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOME[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
