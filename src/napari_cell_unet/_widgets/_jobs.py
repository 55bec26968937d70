"""Drive a core generator (it yields Progress events and returns a result) from the GUI, in a thread or synchronously."""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Generator
from typing import Any, NamedTuple

from napari.utils import cancelable_progress

from .._progress import Progress, relay

SYNC_ENV = "NAPARI_CELL_UNET_SYNC"  # "1": run every job in the calling thread (tests, scripting)
PROGRESS_STEPS = 1000
log = logging.getLogger(__name__)


class JobFailed(NamedTuple):
    error: BaseException


class JobReturned(NamedTuple):
    """What the generator returned (not sent when it was stopped from outside)."""
    value: Any


class JobEnded(NamedTuple):
    """The last event of every job: finishing in the event stream keeps it after every result."""


def run_sync_by_default() -> bool:
    return os.environ.get(SYNC_ENV, "") not in ("", "0")


def guarded(events: Generator, stop: threading.Event, cooperative: bool = False) -> Generator[Any, None, None]:
    """Yield `events` until `stop` is set, then a `JobReturned` with their result; turn any exception into a final
    `JobFailed`.

    Exceptions travel as values because napari's worker treats a RuntimeError (what torch
    raises for most device failures) as "the worker was deleted" and drops it. `cooperative`:
    the generator watches the stop flag itself and ends with its own last words (training's
    best model), so keep reading. The generator is closed in this thread (by `relay`) so that its
    `finally` frees memory here.
    """
    try:
        returned = yield from relay(events, should_stop=None if cooperative else stop.is_set)
        if not stop.is_set() or cooperative:
            yield JobReturned(returned)
    except Exception as exc:  # reported to the user by Job._finish
        log.exception("napari-cell-unet job failed")
        yield JobFailed(exc)
    yield JobEnded()


class Job:
    """One long computation: a napari progress bar, a Cancel, and callbacks in the GUI thread.

    `make_events(should_stop)` creates the generator; a generator that honours `should_stop`
    itself is `cooperative`. `on_event(event)` gets every yielded event (Progress included), `on_result(value)`
    what the generator returned; `on_done(cancelled)` runs at the end unless it failed, in which case
    `on_error(exception)` runs.
    """

    def __init__(self, make_events: Callable[[Callable[[], bool]], Generator], description: str,
                 on_event: Callable[[Any], None], on_done: Callable[[bool], None],
                 on_error: Callable[[BaseException], None], cooperative: bool = False,
                 on_result: Callable[[Any], None] | None = None):
        self.description = description
        self._cooperative = cooperative
        self._on_event, self._on_done, self._on_error = on_event, on_done, on_error
        self._on_result = on_result
        self._stop = threading.Event()
        self._events = make_events(self._stop.is_set)
        self._error: BaseException | None = None
        self._pbar: cancelable_progress | None = None
        self.worker = None
        self.running = False
        self._pending: deque = deque()
        self._dispatching = False

    @property
    def cancelled(self) -> bool:
        return self._stop.is_set()

    def cancel(self) -> None:
        self._stop.set()

    def start(self, sync: bool = False) -> None:
        self.running = True
        self._pbar = cancelable_progress(total=PROGRESS_STEPS, desc=self.description, cancel_callback=self.cancel)
        if sync:
            for event in guarded(self._events, self._stop, self._cooperative):
                self._handle(event)
            return
        from napari.qt.threading import create_worker

        self.worker = create_worker(guarded, self._events, self._stop, self._cooperative,
                                    _start_thread=False)
        self.worker.yielded.connect(self._handle)
        self.worker.start()

    def _handle(self, event: Any) -> None:
        """Dispatch strictly in order: updating napari's progress bar can process Qt events, which
        would otherwise deliver the next events (even the end) inside this handler."""
        self._pending.append(event)
        if self._dispatching:
            return
        self._dispatching = True
        try:
            while self._pending:
                self._dispatch_safely(self._pending.popleft())
        finally:
            self._dispatching = False

    def _dispatch_safely(self, event: Any) -> None:
        """Nothing raised by a callback reaches Qt's event loop (which aborts napari): an error while
        handling an event ends up in `on_error` at the end of the job; one in `on_done`/`on_error`
        itself becomes a napari notification."""
        try:
            self._dispatch(event)
        except Exception as exc:
            log.exception("napari-cell-unet: handling a job event failed")
            if isinstance(event, JobEnded):
                self._last_resort(exc)
            elif self._error is None:
                self._error = exc

    def _last_resort(self, exc: BaseException) -> None:
        try:
            from napari.utils.notifications import show_error

            show_error(f"{self.description} failed: {type(exc).__name__}: {exc}")
        except Exception:  # even the notification failed: the log has it
            log.exception("napari-cell-unet: could not report an error")

    def _dispatch(self, event: Any) -> None:
        if isinstance(event, JobEnded):
            self._finish()
            return
        if isinstance(event, JobFailed):
            self._error = event.error
            return
        if isinstance(event, JobReturned):
            if self._on_result is not None:
                self._on_result(event.value)
            return
        if isinstance(event, Progress):
            self._show_progress(event)
        self._on_event(event)

    def _show_progress(self, event: Progress) -> None:
        pbar = self._pbar
        if pbar is None:
            return
        target = int(round(min(max(event.fraction, 0.0), 1.0) * PROGRESS_STEPS))
        if target > pbar.n:
            pbar.update(target - pbar.n)
        if event.message:
            pbar.set_description(f"{self.description}: {event.message}")

    def _finish(self) -> None:
        self.running = False
        pbar, self._pbar = self._pbar, None
        if pbar is not None:
            try:
                pbar.close()
            except Exception:  # the progress bar is napari's; the job's end still reaches the widget
                log.exception("napari-cell-unet: closing the progress bar failed")
        if self._error is None:
            try:
                self._on_done(self.cancelled)
                return
            except Exception as exc:
                log.exception("napari-cell-unet: finishing a job failed")
                self._error = exc
        self._on_error(self._error)
