"""Running work off the GUI thread: a napari worker that never raises and starts only once its
signals are connected (the model, saving and export all go through ``start_worker``)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from napari.qt.threading import create_worker

GO_TIMEOUT_S = 10.0  # a worker waits at most this long for the event loop to let it go


@dataclass
class Outcome:
    """What a worker hands back: a value, or the message of the error that stopped it."""

    value: Any = None
    error: str | None = None


def guarded(func, *args, go: threading.Event | None = None) -> Outcome:
    """Run ``func`` in a worker without ever raising: errors come back as a message, so the GUI
    shows one clear line instead of a traceback. ``go``: wait for it first (see start_worker)."""
    if go is not None:
        go.wait(GO_TIMEOUT_S)
    try:
        return Outcome(func(*args))
    except Exception as error:  # noqa: BLE001 (every failure must reach the user as a message)
        return Outcome(error=str(error) or type(error).__name__)


def start_worker(func, *args, description: str, on_value, on_error, on_finished=None, progress: bool = True):
    """Run ``guarded(func, *args)`` in a napari worker; returns the (running) worker.

    ``progress``: show it in napari's activity panel (``description``). Off for work of tens of
    milliseconds repeated at each click: the panel's bar costs the GUI thread ~90 ms to make, more
    than the work itself (docs/benchmarks.md, "Click prompts in napari").
    ``on_finished(worker)`` is called once it ended, whatever happened. The work itself begins
    once control is back in the event loop, so whoever gets the worker can still connect to its
    signals: work that fails at once would otherwise finish before anyone listened."""
    go = threading.Event()
    worker = create_worker(guarded, func, *args, go=go, **({"_progress": {"desc": description}} if progress else {}))
    # "started" is delivered in the GUI thread, through its event loop: only then does the work begin.
    # (Not QTimer.singleShot: PySide6 6.12 loses a reference to None on each call, and Python aborts.)
    worker.started.connect(lambda: go.set())
    worker.returned.connect(lambda outcome: on_error(outcome.error) if outcome.error else on_value(outcome.value))
    if on_finished is not None:
        worker.finished.connect(lambda: on_finished(worker))
    worker.start()
    return worker


def guarded_steps(generator_func, *args):
    """``generator_func(*args)``'s yields passed on, and its return value (or error message) as an Outcome."""
    try:
        value = yield from generator_func(*args)
    except Exception as error:  # noqa: BLE001 (every failure must reach the user as a message)
        return Outcome(error=str(error) or type(error).__name__)
    return Outcome(value)


def start_steps_worker(generator_func, *args, on_step, on_value, on_error, on_finished=None):
    """Run a generator in a napari worker: each value it yields goes to ``on_step`` (in the GUI thread: a
    progress bar), its return value to ``on_value``, an error's message to ``on_error``; never raises.
    Signals are connected before the worker starts. Returns the running worker."""
    worker = create_worker(guarded_steps, generator_func, *args)
    worker.yielded.connect(on_step)
    worker.returned.connect(lambda outcome: on_error(outcome.error) if outcome.error else on_value(outcome.value))
    if on_finished is not None:
        worker.finished.connect(lambda: on_finished(worker))
    worker.start()
    return worker
