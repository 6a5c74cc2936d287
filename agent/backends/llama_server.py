"""``python -m agent.backends.llama_server ARGS``: llama-cpp-python's OpenAI-compatible server
(``python -m llama_cpp.server ARGS``) with llama.cpp's extra CPU buffers off where they are not safe
(``agent.backends.llama_cpp.extra_buffers_allowed``: AMX advertised but trapped by some VMs)."""

from __future__ import annotations

import runpy
import sys

from agent.backends.llama_cpp import disable_unsafe_extra_buffers


def main() -> None:
    disable_unsafe_extra_buffers()
    sys.argv[0] = "llama_cpp.server"
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
