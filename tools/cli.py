"""argparse pieces every subcommand shares. They live here, in the lowest layer with a subcommand
(``tools.search.cli``: ``agent index``); ``agent.config`` re-exports them for the layers above."""

from __future__ import annotations

import argparse

__all__ = ["HelpFormatter"]


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Descriptions kept as written (module docstrings), defaults shown after each option's help
    (unless the help states its own default, or the option is required)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.required or "(default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)
