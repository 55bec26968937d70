"""The one progress record that every long-running core function yields."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, NamedTuple


class Progress(NamedTuple):
    done: int
    total: int
    message: str = ""

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0


def result_of(steps: Generator[Any, None, Any]) -> Any:
    """Run a progress generator to the end, ignoring what it yields; its return value."""
    try:
        while True:
            next(steps)
    except StopIteration as done:
        return done.value
