"""The console scripts, run as a user runs them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file


def _script(name: str) -> list[str]:
    """The installed console script (next to this Python), as the README uses it."""
    path = Path(sys.executable).parent / name
    assert path.exists(), f"{name} is not installed next to {sys.executable}: pip install -e ."
    return [str(path)]


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(list(args), capture_output=True, text=True, timeout=300, env=env)


def test_lsms_info_json_reports_the_budget():
    done = _run(*_script("lsms-info"), "--preset", "lsms", "--text-dim", "768", "--image-size", "480",
                "--tokens", "20", "--json")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["params_m"] == pytest.approx(7.51, rel=0.03)
    assert info["gmacs"] == pytest.approx(10.60, rel=0.05)
    assert info["text_encoder_params_m"] == pytest.approx(109.48, rel=0.01)  # bert-base-uncased


def test_lsms_info_rejects_bad_sizes():
    done = _run(*_script("lsms-info"), "--image-size", "100")
    assert done.returncode == 2
    assert "multiple of 32" in done.stderr and "Traceback" not in done.stderr


def test_lsms_segment_writes_a_mask_of_the_image_size(tiny_checkpoint, tmp_path):
    output = tmp_path / "mask.png"
    done = _run(*_script("lsms-segment"), get_testdata_file("693_UNCI.dcm"), "--text", "the largest lesion",
                "--checkpoint", str(tiny_checkpoint), "--device", "cpu", "-o", str(output), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    mask = np.asarray(Image.open(output))
    assert mask.shape == (512, 512)
    assert set(np.unique(mask)) <= {0, 255}
    assert report["pixels"] == int((mask > 0).sum())
    assert report["model"]["name"] == "tiny-test" and report["seconds"] > 0
    assert report["height"] == 512 and report["hounsfield"] is True


def test_lsms_segment_on_npy_and_png(tiny_checkpoint, tmp_path, lits):
    np.save(tmp_path / "slice.npy", lits.hu[60])
    Image.fromarray((np.clip(lits.hu[60] + 100, 0, 255)).astype(np.uint8)).save(tmp_path / "slice.png")
    for name in ("slice.npy", "slice.png"):
        out = tmp_path / f"{name}.mask.png"
        done = _run(*_script("lsms-segment"), str(tmp_path / name), "--text", "a lesion",
                    "--checkpoint", str(tiny_checkpoint), "-o", str(out))
        assert done.returncode == 0, done.stderr
        assert np.asarray(Image.open(out)).shape == (128, 128)


@pytest.mark.parametrize("case,message", [
    ("missing-image", "no such file"),
    ("empty-text", "expression is empty"),
    ("pickle-checkpoint", "pickle"),
])
def test_lsms_segment_errors_are_one_clear_line(case, message, tiny_checkpoint, tmp_path):
    image, text, checkpoint = get_testdata_file("CT_small.dcm"), "a lesion", str(tiny_checkpoint)
    if case == "missing-image":
        image = str(tmp_path / "nope.dcm")
    elif case == "empty-text":
        text = "   "
    else:
        checkpoint = str(tmp_path / "model.pt")
        shutil.copy(tiny_checkpoint, checkpoint)
        Path(checkpoint).write_bytes(b"\x80\x04" + b"\x00" * 64)
    done = _run(*_script("lsms-segment"), image, "--text", text, "--checkpoint", checkpoint,
                "-o", str(tmp_path / "m.png"))
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "m.png").exists()
