"""Run lsms-train as a separate process, follow its JSON-lines log, stop it (no Qt here).

The child is never left behind: ``stop()`` ends it (SIGTERM, then SIGKILL after
``STOP_TIMEOUT_S``), every process still running when Python exits is stopped (atexit), and
the child itself exits when this process dies (``lsms-train --exit-with-parent``). A stopped
run keeps its folder: ``train_state.safetensors`` (saved every ``SAVE_EVERY_STEPS`` iterations
and at each epoch's end) lets a new TrainingProcess on the same folder resume it.
"""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

STATE_FILE = "train_state.safetensors"  # training/state.py's name (not imported: it pulls in torch)
SAVE_EVERY_STEPS = 10  # iterations between resumable states: a cancel loses at most this many (~30 s of CPU
#                        training at 256 px, batch 8); writing the state costs ~0.2 s for the lsms preset
STOP_TIMEOUT_S = 5.0  # after SIGTERM, wait this long before SIGKILL


@dataclass
class TrainingStatus:
    """What the run's ``log.jsonl`` (and its exit) said so far. Losses are the epoch's mean total
    training loss; Dice and hit rate are in [0, 1], of the last validated epoch."""

    epoch: int = 0  # epochs done
    epochs: int = 0  # epochs in the run
    train_loss: float | None = None
    val_dice: float | None = None
    val_hit_rate: float | None = None
    best_val_dice: float | None = None
    validated: bool | None = None  # False: the run has no validation split (best = lowest training loss)
    resumed_at: int | None = None  # epochs already done when the run was last resumed
    notes: list[str] = field(default_factory=list)  # lsms-train's "note" events (e.g. an empty split)
    finished: bool = False
    cancelled: bool = False
    failed: str | None = None  # the last lines of stderr when the process failed

    def figures(self) -> str:
        """', loss 0.412, val Dice 0.512, hit rate 0.40' for the last epoch (empty before the first)."""
        parts = [f"loss {self.train_loss:.4g}"] if self.train_loss is not None else []
        if self.val_dice is not None:
            parts.append(f"val Dice {self.val_dice:.3f}")
        if self.val_hit_rate is not None:
            parts.append(f"hit rate {self.val_hit_rate:.2f}")
        return "".join(f", {p}" for p in parts)

    @property
    def text(self) -> str:
        if self.failed:
            return f"training failed: {self.failed}"
        if self.cancelled:
            return f"training cancelled after epoch {self.epoch}/{self.epochs or '?'}{self.figures()}"
        if self.finished:
            if self.validated is False:
                return (f"training finished ({self.epochs} epochs{self.figures()}; no validation split, so "
                        "best.safetensors is the epoch of lowest training loss)")
            loss = f", loss {self.train_loss:.4g}" if self.train_loss is not None else ""
            return f"training finished ({self.epochs} epochs{loss}, best val Dice {self.best_val_dice or 0:.3f})"
        resumed = f" (resumed after epoch {self.resumed_at})" if self.resumed_at is not None else ""
        return f"training: epoch {self.epoch}/{self.epochs or '?'}{self.figures()}{resumed}"

    def read(self, record: dict) -> None:
        """Take one log record into account."""
        event = record.get("event")
        if event == "start":
            self.epochs = record.get("epochs", self.epochs)
            self.validated = bool(record.get("val_samples"))
        elif event == "resume":
            self.resumed_at = record.get("epoch")
        elif event == "note":
            self.notes.append(str(record.get("message", "")))
        elif event == "epoch":
            self.epoch, self.epochs = record["epoch"], record["epochs"]
            self.train_loss = record.get("train_total", self.train_loss)
            if record.get("val_dice") is not None:
                self.val_dice = record["val_dice"]
                best = self.best_val_dice
                self.best_val_dice = self.val_dice if best is None else max(best, self.val_dice)
            self.val_hit_rate = record.get("val_hit_rate")


_RUNNING: set["TrainingProcess"] = set()  # started and not yet seen to end: stopped at exit


class TrainingProcess:
    """``lsms-train DATASET -o RUN ...`` in the background; ``poll()`` reads its progress.

    A folder that holds a resumable state (a cancelled run) is resumed (``--resume``: the run's
    stored settings win over ``extra_args``)."""

    def __init__(self, dataset: str | Path, run_dir: str | Path, extra_args: list[str] | None = None) -> None:
        self.dataset = str(dataset)
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.stderr_path = self.run_dir / "stderr.log"
        self.resumed = (self.run_dir / STATE_FILE).exists()
        args = list(extra_args or [])
        if "--save-every-steps" not in args:
            args += ["--save-every-steps", str(SAVE_EVERY_STEPS)]
        command = [sys.executable, "-m", "training.train_cli", str(dataset), "-o", str(self.run_dir), "--no-progress",
                   "--exit-with-parent", str(os.getpid()), *(["--resume"] if self.resumed else []), *args]
        self._stderr = open(self.stderr_path, "a")
        self._stdout = open(self.run_dir / "stdout.log", "a")
        try:
            self.process = subprocess.Popen(command, stdout=self._stdout, stderr=self._stderr)
        except BaseException:
            self._stderr.close()
            self._stdout.close()
            raise
        _RUNNING.add(self)
        self.status = TrainingStatus()
        self._log_offset = 0
        self._kill_at: float | None = None  # when a cancelled process that ignored SIGTERM gets SIGKILL

    @property
    def best_checkpoint(self) -> Path:
        return self.run_dir / "best.safetensors"

    @property
    def resumable(self) -> bool:
        """The folder holds a state to resume from."""
        return (self.run_dir / STATE_FILE).exists()

    def running(self) -> bool:
        return self.process.poll() is None

    def _read_log(self) -> None:
        log = self.run_dir / "log.jsonl"
        if not log.exists():
            return
        with open(log, "rb") as handle:
            handle.seek(self._log_offset)
            data = handle.read()
        end = data.rfind(b"\n") + 1  # a line being written is read next time
        self._log_offset += end
        for line in data[:end].splitlines():
            try:
                self.status.read(json.loads(line))
            except (ValueError, KeyError, TypeError):
                continue

    def poll(self) -> TrainingStatus:
        """Read what the log gained; once the process ended, finished, cancelled or failed is set."""
        self._read_log()
        code = self.process.poll()
        if code is None and self._kill_at is not None and time.monotonic() >= self._kill_at:
            self.process.kill()  # it did not end on SIGTERM
            code = self.process.wait(STOP_TIMEOUT_S)
        if code is not None and not (self.status.finished or self.status.failed or self.status.cancelled):
            self._closed()
            if code == 0:  # ended on its own (perhaps just as it was cancelled)
                self.status.finished = True
            elif self._kill_at is not None:
                self.status.cancelled = True
            else:
                tail = self.stderr_path.read_text(errors="replace").strip().splitlines()[-3:]
                self.status.failed = " ".join(tail) or f"exit code {code}"
        return self.status

    def cancel(self) -> None:
        """Ask the process to stop (SIGTERM) without waiting; ``poll()`` sends SIGKILL after
        STOP_TIMEOUT_S and reports ``cancelled`` once it ended."""
        if self._kill_at is None:
            self._kill_at = time.monotonic() + STOP_TIMEOUT_S
        if self.running():
            self.process.terminate()

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """Stop the process and wait for it (SIGTERM, SIGKILL after ``timeout_s``); its exit code."""
        self.cancel()
        try:
            code = self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self.poll()
        return code

    def _closed(self) -> None:
        _RUNNING.discard(self)
        for handle in (self._stderr, self._stdout):
            handle.close()


@atexit.register
def _stop_running() -> None:
    """No orphan when Python exits with a run still going (the widget also stops it on close)."""
    for training in list(_RUNNING):
        if training.running():
            training.stop(timeout_s=2.0)
        _RUNNING.discard(training)

