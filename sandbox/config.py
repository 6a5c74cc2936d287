"""One dataclass configures a sandbox: limits, backend and pool."""

from __future__ import annotations

from dataclasses import dataclass, field

from sandbox.errors import ConfigError

__all__ = ["BACKENDS", "ISOLATION_MODES", "SandboxConfig"]

BACKENDS = ("process", "docker")
ISOLATION_MODES = ("auto", "bwrap", "unshare", "none")


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class SandboxConfig:
    backend: str = field(default="process",
                         metadata=_help("process (namespaces + rlimits + seccomp) or docker"))
    timeout_s: float = field(default=5.0, metadata=_help("wall-clock limit of one run, in seconds"))
    memory_mb: int = field(default=512, metadata=_help("address-space (process) or memory (docker) limit"))
    max_output_chars: int = field(default=20_000, metadata=_help("cap on stdout and on stderr per run"))
    pool_size: int = field(default=2, metadata=_help("pre-started workers kept ready (0: start on demand)"))
    max_processes: int = field(default=64, metadata=_help("RLIMIT_NPROC / docker pids limit"))
    max_open_files: int = field(default=256, metadata=_help("RLIMIT_NOFILE"))
    file_size_mb: int = field(default=64, metadata=_help("RLIMIT_FSIZE: largest file the code may write"))
    tmp_size_mb: int = field(default=256, metadata=_help("size of the private writable /tmp work dir"))
    cpu_session_s: int = field(default=600, metadata=_help("hard RLIMIT_CPU over a whole session"))
    kill_grace_s: float = field(default=1.0, metadata=_help("extra wait after timeout_s before a hard kill"))
    isolation: str = field(default="auto", metadata=_help("process backend: auto, bwrap, unshare or none"))
    allow_weak_isolation: bool = field(default=False, metadata=_help(
        "process backend: accept the unshare or none modes when bubblewrap is missing (weaker: code can "
        "read world-readable host files and reach host sockets outside the masked dirs)"))
    python: str = field(default="",
                        metadata=_help("interpreter to run (default: this one / python3 in the image)"))
    site_packages: bool = field(default=False, metadata=_help("process backend: let code import the "
                                                               "interpreter's installed packages (read-only; "
                                                               "slower worker start: site and .pth run)"))
    seccomp: bool = field(default=True, metadata=_help("install the seccomp filter (needs pyseccomp)"))
    image: str = field(default="splice-sandbox:latest", metadata=_help("docker image with python3"))
    docker_host: str = field(default="", metadata=_help("Docker API address (default: DOCKER_HOST)"))
    cpus: float = field(default=1.0, metadata=_help("docker: CPU quota in cores"))

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"sandbox backend {self.backend!r} is unknown: "
                              f"use one of {', '.join(BACKENDS)}")
        if self.isolation not in ISOLATION_MODES:
            raise ConfigError(f"isolation {self.isolation!r} is unknown: "
                              f"use one of {', '.join(ISOLATION_MODES)}")
        for name in ("timeout_s", "memory_mb", "max_output_chars", "max_processes", "max_open_files",
                     "file_size_mb", "tmp_size_mb", "cpu_session_s", "cpus"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"sandbox {name} must be > 0, got {getattr(self, name)!r}")
        if self.pool_size < 0:
            raise ConfigError(f"sandbox pool_size must be >= 0, got {self.pool_size}")
        if self.memory_mb < 64:
            raise ConfigError(f"sandbox memory_mb={self.memory_mb} is too small for Python: use >= 64")
        if self.max_processes < 4:
            raise ConfigError(f"sandbox max_processes={self.max_processes} is too small: use >= 4")

    def limits(self) -> dict[str, float]:
        """The rlimits the worker applies to itself before running any code."""
        return {"memory_mb": self.memory_mb, "file_size_mb": self.file_size_mb,
                "max_processes": self.max_processes, "max_open_files": self.max_open_files,
                "cpu_session_s": self.cpu_session_s}
