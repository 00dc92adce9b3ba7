"""CLI subcommand ``iam``: registered on the main parser by ``register_cli``."""

from __future__ import annotations

import argparse


def register_cli(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``iam`` to the main CLI's subparsers."""
