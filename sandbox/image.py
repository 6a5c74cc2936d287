"""Build the docker backend's image without pulling anything: a rootfs tarball holding this host's
Python (standard library only) and the shared libraries it needs, imported through the Docker API.

    python -m sandbox.image --tag splice-sandbox:latest      # needs DOCKER_HOST or a local daemon

The image has no shell, no package manager and no site-packages: only ``/usr/local/bin/python3``.
Any image with ``python3`` on PATH works too (``SandboxConfig.image``, ``SandboxConfig.python``).
"""

from __future__ import annotations

import argparse
import io
import os
import re
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sandbox.errors import SandboxError

__all__ = ["build_rootfs", "ensure_image", "import_image"]

PREFIX_IN_IMAGE = "/opt/python"
SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idlelib", "tkinter", "turtledemo",
             "ensurepip", "lib2to3"}
PASSWD = "root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/tmp:/sbin/nologin\n"
GROUP = "root:x:0:\nnogroup:x:65534:\n"


def _shared_libs(binaries: Iterable[str]) -> set[str]:
    """The ldd closure of the interpreter and its extension modules."""
    libs: set[str] = set()
    for binary in binaries:
        out = subprocess.run(["ldd", binary], check=False, capture_output=True, text=True).stdout
        for match in re.finditer(r"(/\S+) \(0x", out):
            libs.add(match.group(1))
    return libs


def _python_files(prefix: Path, version: str) -> Iterable[Path]:
    """The standard library (no site-packages, tests, tkinter...) and libpython."""
    yield from (prefix / "lib").glob("libpython*")
    for root, dirs, files in os.walk(prefix / "lib" / f"python{version}"):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.startswith("config-")]
        for name in files:
            yield Path(root) / name


def _reset(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mode |= 0o444 | (0o111 if info.isdir() or info.mode & 0o100 else 0)
    return info


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    tar.addfile(info, io.BytesIO(data))


def _add_dir(tar: tarfile.TarFile, name: str, mode: int = 0o755) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, mode
    tar.addfile(info)


def build_rootfs(out: str | Path, prefix: str | Path | None = None) -> Path:
    """Write a rootfs tarball with the Python at ``prefix`` (default: this interpreter's base)."""
    prefix = Path(prefix or sys.base_prefix).resolve()
    version = sysconfig.get_python_version()
    python = prefix / "bin" / f"python{version}"
    files = list(_python_files(prefix, version))
    libs = _shared_libs([str(python), *(str(f) for f in files if f.suffix == ".so")])
    out = Path(out)
    with tarfile.open(out, "w") as tar:
        for d in ("tmp", "proc", "dev", "sys", "etc", "usr", "usr/local", "usr/local/bin", "root"):
            _add_dir(tar, d, 0o1777 if d == "tmp" else 0o755)
        _add_bytes(tar, "etc/passwd", PASSWD.encode())
        _add_bytes(tar, "etc/group", GROUP.encode())
        tar.add(python, f"{PREFIX_IN_IMAGE[1:]}/bin/python{version}", filter=_reset)
        for f in files:
            tar.add(f, f"{PREFIX_IN_IMAGE[1:]}/{f.relative_to(prefix)}", filter=_reset)
        for lib in sorted(libs):
            real = os.path.realpath(lib)
            for name in {lib, real} if not lib.startswith(str(prefix)) else {f"/usr/lib/{Path(lib).name}"}:
                tar.add(real, name.lstrip("/"), filter=_reset)
        for link in ("python3", "python"):
            info = tarfile.TarInfo(f"usr/local/bin/{link}")
            info.type, info.linkname = tarfile.SYMTYPE, f"{PREFIX_IN_IMAGE}/bin/python{version}"
            tar.addfile(info)
    return out


def import_image(client: Any, tag: str, prefix: str | Path | None = None) -> str:
    """Build the rootfs, import it and tag it ``tag`` explicitly; returns the tag.

    Not ``import_image_from_file(repository=..., tag=...)``: podman's Docker-compatible API ignores the
    tag there and names the image ``:latest``, so the image is imported untagged and tagged after."""
    repository, _, version = tag.partition(":")
    with tempfile.TemporaryDirectory() as tmp:
        tarball = build_rootfs(Path(tmp) / "rootfs.tar", prefix)
        image_id = _imported_id(client.api.import_image_from_file(str(tarball)))
    if not client.api.tag(image_id, repository, version or "latest"):
        raise SandboxError(f"the engine refused to tag image {image_id} as {tag}")
    client.images.get(tag)  # the name the backend will look up must resolve now
    return tag


def _imported_id(response: str | bytes) -> str:
    """The image id from an import reply: JSON lines whose last ``id`` / ``status`` is ``sha256:...``."""
    text = response.decode() if isinstance(response, bytes) else str(response)
    found = re.findall(r'"(?:id|status)"\s*:\s*"(sha256:[0-9a-f]{64})"', text)
    if not found:
        raise SandboxError(f"the engine's import reply names no image id: {text[:300]!r}")
    return found[-1]


def ensure_image(client: Any, tag: str, prefix: str | Path | None = None) -> str:
    """Import the image unless the engine already has ``tag``."""
    import docker

    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        import_image(client, tag, prefix)
    return tag


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tag", default="splice-sandbox:latest")
    parser.add_argument("--tar", help="only write the rootfs tarball to this path")
    args = parser.parse_args(argv)
    if args.tar:
        print(build_rootfs(args.tar))
        return
    import docker

    print(import_image(docker.from_env(), args.tag))


if __name__ == "__main__":
    main()
