"""lsms_core stays free of Qt and napari (the plugin depends on it, never the reverse)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import lsms_core


def test_lsms_core_imports_neither_qt_nor_napari():
    modules = [m.name for m in pkgutil.walk_packages(lsms_core.__path__, "lsms_core.")]
    assert "lsms_core.inference" in modules and "lsms_core.text_encoder" in modules
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "from lsms_core.text_encoder import TextEncoder\n"
        "TextEncoder().encode(['a lesion'])\n"  # transformers loaded too
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('napari', 'PySide6', 'PyQt5', 'PyQt6', 'qtpy', 'vispy', 'magicgui', 'training'))\n"
        "print(','.join(bad))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"lsms_core pulled in {done.stdout.strip()}"
