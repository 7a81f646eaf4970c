"""Progress bars for long work, shared by every stage so that they look and behave alike.

Bars go to stderr so that tables and JSON on stdout stay clean for pipes. They are off on
non-zero ranks under torchrun (one bar per run, not one per process) and when NETSHRINK_PROGRESS=0.
"""

import os
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")

_STDERR = Console(stderr=True)


def progress_enabled(requested: bool = True) -> bool:
    """Whether bars should be drawn: requested, rank 0, and not switched off by the environment."""
    rank = int(os.environ.get("RANK", "0"))
    return requested and rank == 0 and os.environ.get("NETSHRINK_PROGRESS", "1") != "0"


def make_progress(enabled: bool = True) -> Progress:
    """A rich Progress with netshrink's columns; disabled bars cost nothing."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        console=_STDERR,
        transient=True,
        disable=not progress_enabled(enabled),
    )


def track(
    items: Iterable[T], description: str, *, total: int | None = None, enabled: bool = True
) -> Iterator[T]:
    """Iterate over `items` with a progress bar."""
    with make_progress(enabled) as bar:
        task = bar.add_task(
            description, total=total if total is not None else len(items), status=""
        )
        for item in items:
            yield item
            bar.advance(task)
