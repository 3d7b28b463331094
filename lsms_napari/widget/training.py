"""Run lsms-train as a separate process and follow its JSON-lines log (no Qt here)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass
class TrainingStatus:
    epoch: int = 0
    epochs: int = 0
    val_dice: float | None = None
    finished: bool = False
    failed: str | None = None  # the last lines of stderr when the process failed

    @property
    def text(self) -> str:
        if self.failed:
            return f"training failed: {self.failed}"
        if self.finished:
            return f"training finished ({self.epochs} epochs, best val Dice {self.val_dice or 0:.3f})"
        dice = f", val Dice {self.val_dice:.3f}" if self.val_dice is not None else ""
        return f"training: epoch {self.epoch}/{self.epochs or '?'}{dice}"


class TrainingProcess:
    """``lsms-train DATASET -o RUN ...`` in the background; ``poll()`` reads its progress."""

    def __init__(self, dataset: str | Path, run_dir: str | Path, extra_args: list[str] | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.stderr_path = self.run_dir / "stderr.log"
        resume = ["--resume"] if (self.run_dir / "train_state.safetensors").exists() else []
        command = [sys.executable, "-m", "training.train_cli", str(dataset), "-o", str(self.run_dir), "--no-progress",
                   *resume, *(extra_args or [])]
        self._stderr = open(self.stderr_path, "w")
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=self._stderr)
        self.status = TrainingStatus()

    @property
    def best_checkpoint(self) -> Path:
        return self.run_dir / "best.safetensors"

    def poll(self) -> TrainingStatus:
        log = self.run_dir / "log.jsonl"
        if log.exists():
            for line in log.read_text().splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # a line being written
                if record.get("event") == "start":
                    self.status.epochs = record["epochs"]
                elif record.get("event") == "epoch":
                    self.status.epoch, self.status.epochs = record["epoch"], record["epochs"]
                    if record.get("val_dice") is not None:
                        best = self.status.val_dice
                        self.status.val_dice = record["val_dice"] if best is None else max(best, record["val_dice"])
        code = self.process.poll()
        if code is not None and not self.status.finished and not self.status.failed:
            self._stderr.close()
            if code == 0:
                self.status.finished = True
            else:
                tail = self.stderr_path.read_text().strip().splitlines()[-3:]
                self.status.failed = " ".join(tail) or f"exit code {code}"
        return self.status

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
