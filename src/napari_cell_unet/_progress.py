"""The one progress record that every long-running core function yields."""

from __future__ import annotations

from typing import NamedTuple


class Progress(NamedTuple):
    done: int
    total: int
    message: str = ""

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0
