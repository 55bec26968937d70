"""The one progress record that every long-running core function yields, and the one way to drive one.

Convention: long work is a generator that yields events (`Progress`, training's `TrainStep`, ...) and
*returns* its result; callers take it with `result = yield from ...`, `relay(...)` or `result_of(...)`.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from contextlib import closing
from typing import Any, NamedTuple, TypeVar

Result = TypeVar("Result")


class Progress(NamedTuple):
    done: int
    total: int
    message: str = ""

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0


def result_of(steps: Generator[Any, None, Result], on_event: Callable[[Any], None] | None = None,
              should_stop: Callable[[], bool] | None = None) -> Result | None:
    """Run a generator to the end and return its return value, giving each yielded event to `on_event`.

    None when `should_stop()` says stop after an event (cancelled); the generator is then closed, so its
    `finally` runs here."""
    returned = []

    def keeping_the_result() -> Generator[Any, None, None]:
        returned.append((yield from relay(steps, should_stop=should_stop)))

    with closing(keeping_the_result()) as events:
        for event in events:
            if on_event is not None:
                on_event(event)
    return returned[0]


def relay(steps: Generator[Any, None, Result], convert: Callable[[Any], Any] | None = None,
          should_stop: Callable[[], bool] | None = None) -> Generator[Any, None, Result | None]:
    """Yield `convert(event)` for each event of `steps` and return its result: `result = yield from relay(...)`
    re-words or re-scales another generator's progress. None when `should_stop()` says stop after an event
    (the generator is then closed)."""
    try:
        while True:
            try:
                event = next(steps)
            except StopIteration as done:
                return done.value
            yield event if convert is None else convert(event)
            if should_stop is not None and should_stop():
                return None
    finally:
        steps.close()
