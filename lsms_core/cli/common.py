"""What every console script shares: turning expected errors into one clear line, not a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable

from ..checkpoint import CheckpointError
from ..config import ConfigError
from ..expressions import ExpressionError
from ..pixels import ImageError
from ..text_folder import TextEncoderNotFound

USER_ERRORS: tuple[type[BaseException], ...] = (
    CheckpointError, ConfigError, ExpressionError, ImageError, TextEncoderNotFound, OSError, ValueError,
    RuntimeError)  # OSError: missing files, permissions, a folder given as the output, a full disk


def run_cli(prog: str, main: Callable[[], int]) -> int:
    """Run ``main``; expected errors print ``prog: error: message`` (one line) and exit 2."""
    try:
        return main()
    except USER_ERRORS as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def progress_bar(description: str, unit: str = "img", enabled: bool = True):
    """(tqdm bar, update(done, total)): a terminal progress bar, off when ``enabled`` is False or stderr is
    not a terminal; ``update`` sets both numbers (a total that grows while the work goes on is fine)."""
    from tqdm import tqdm

    bar = tqdm(desc=description, unit=unit, leave=False, disable=None if enabled else True)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    return bar, update
