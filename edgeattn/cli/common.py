"""Shared CLI pieces: the --json flag, printing, progress."""

from __future__ import annotations

import json
from contextlib import contextmanager
from typing import Any, Iterator

import click

json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")


def method_names(flag: str) -> str:
    """The methods of `--prune` or `--sparse`, for help texts (from the one method registry)."""
    from edgeattn.graphs.methods import methods

    return ", ".join(m.name for m in methods() if m.flag == flag)


def emit_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


@contextmanager
def progress(description: str, enabled: bool = True) -> Iterator[None]:
    """A rich spinner on stderr for a long step (silent with --json or when not a terminal)."""
    if not enabled:
        yield
        return
    from rich.console import Console

    console = Console(stderr=True)
    with console.status(description):
        yield
    console.print(f"[green]✓[/green] {description}")
