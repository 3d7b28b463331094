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
        "TextEncoder().encode(['a lesion'])\n"  # the text encoder's own imports too
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('napari', 'PySide6', 'PyQt5', 'PyQt6', 'qtpy', 'vispy', 'magicgui', 'training'))\n"
        "print(','.join(bad))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"lsms_core pulled in {done.stdout.strip()}"


def _imported_modules(path) -> set[str]:
    """lsms_core modules ``path`` imports, at the top or inside functions (relative imports resolved)."""
    import ast

    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # from .x import y / from . import x (lsms_core/<file>.py: level 1 is lsms_core)
                package = ["lsms_core", *path.parent.relative_to(path.parents[len(path.parts) - 2]).parts[1:]]
                package = package[: len(package) - node.level + 1]
                base = ".".join(package + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_dicom_and_image_io_do_not_import_each_other_in_a_cycle():
    """Issue 15: dicom imported image_io (Slice, size checks) inside functions while image_io imported
    dicom: the shared pieces live in lsms_core.pixels / lsms_core.files now."""
    from pathlib import Path

    root = Path(lsms_core.__file__).parent
    dicom_imports = _imported_modules(root / "dicom.py")
    assert not {n for n in dicom_imports if n.startswith("lsms_core.image_io")}, dicom_imports
    for shared in ("pixels.py", "files.py"):
        imports = _imported_modules(root / shared)
        assert not {n for n in imports if n.startswith(("lsms_core.image_io", "lsms_core.dicom",
                                                          "lsms_core.preprocessing"))}, (shared, imports)


def test_the_napari_reader_reads_a_dicom_without_torch():
    """Issue 15: the reader imported torch (through preprocessing, for ImageError) just to read a file."""
    code = (
        "import sys\n"
        "from pydicom.data import get_testdata_file\n"
        "from lsms_napari._reader import napari_get_reader\n"
        "path = get_testdata_file('693_UNCI.dcm')\n"
        "layers = napari_get_reader(path)(path)\n"
        "assert layers[0][0].shape == (512, 512), layers[0][0].shape\n"
        "from lsms_napari._sample_data import chest_radiograph\n"
        "chest_radiograph()\n"
        "print('torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False", "the napari reader imported torch"


def test_one_file_hash_and_one_sample_file_map():
    """Issue 15: file_sha256 was written twice (image_io, text_encoder); the DICOM sample file names
    were listed twice (lsms_core.samples, lsms_napari._sample_data)."""
    import inspect

    import lsms_core.text_encoder as text_encoder
    import lsms_napari._sample_data as sample_data
    from lsms_core import files, image_io, samples

    assert image_io.file_sha256 is files.file_sha256
    assert "hashlib" not in inspect.getsource(text_encoder)
    assert "693_UNCI" not in inspect.getsource(sample_data).split('"""', 2)[2].replace("(693_UNCI.dcm)", "")
    assert set(samples.DICOM_SAMPLE_FILES) == {"ct", "xray", "mr"}


def test_the_quick_start_and_the_dicom_reader_import_no_pytorch():
    """Issue 14: a cold lsms-segment with cached graphs (lsms_core.quick) and the DICOM reader pay nothing for
    PyTorch (1-2.5 s to import on a 2-core machine)."""
    code = ("import sys\nimport lsms_core.cli.segment, lsms_core.quick, lsms_core.dicom, lsms_core.image_io\n"
            "import lsms_core.candidates, lsms_core.domain, lsms_core.samples\n"
            "print('torch' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
