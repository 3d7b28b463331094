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


def test_lsms_segment_match_writes_the_next_lesion_the_words_rank(tmp_path, lits, tiny_checkpoint):
    """--match N writes the widget's N-th next match (the default model on LiTS slice 96, where "the second
    largest lesion" is the first next match: tests/test_selection.py); a match the slice does not have, or a
    model without a selector, is one clear line and no file."""
    from lsms_core.inference import Segmenter

    np.save(tmp_path / "slice.npy", lits.hu[96])
    expected = Segmenter("default", device="cpu").segment(lits.hu[96], "the second largest lesion", hounsfield=True)
    count = len(expected.matches.choices())
    for match in (0, 1):
        out = tmp_path / f"match{match}.png"
        done = _run(*_script("lsms-segment"), str(tmp_path / "slice.npy"), "--text", "the second largest lesion",
                    "--device", "cpu", "--match", str(match), "-o", str(out), "--json")
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert np.array_equal(np.asarray(Image.open(out)) > 0, expected.matches.mask(match))
        assert report["match"] == match and report["matches"] == count
        assert report["pixels"] == int(expected.matches.mask(match).sum())
    for args, message in ((["--match", str(count)], f"have {count - 1} next matches"),
                          (["--match", "-1"], "--match -1"),
                          (["--match", "1", "--checkpoint", str(tiny_checkpoint)], "no lesion selector"),
                          (["--match", "1", "--follow", "--slice", "0"], "--match goes with one slice")):
        out = tmp_path / "refused.png"
        done = _run(*_script("lsms-segment"), str(tmp_path / "slice.npy"), "--text", "the second largest lesion",
                    "--device", "cpu", "-o", str(out), *args)
        assert done.returncode != 0 and message in done.stderr and not out.exists(), done.stderr
        assert len(done.stderr.strip().splitlines()) == 1


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


@pytest.mark.parametrize("how", ["same-path", "spelt-otherwise", "hard-link", "symbolic-link", "checkpoint"])
def test_lsms_segment_never_writes_the_mask_over_its_input(tmp_path, capsys, how):
    """Issue 15: ``lsms-segment x.dcm -o x.dcm`` replaced the input DICOM with the mask PNG. Refused before
    anything is loaded (the checkpoint named here does not even exist), the input left as it was."""
    from lsms_core.cli.segment import main

    image = tmp_path / "x.dcm"
    shutil.copy(get_testdata_file("CT_small.dcm"), image)
    before = image.read_bytes()
    checkpoint = tmp_path / "missing.safetensors"
    (tmp_path / "sub").mkdir()
    output = {"same-path": image, "spelt-otherwise": tmp_path / "sub" / ".." / "x.dcm"}.get(how)
    if how == "hard-link":
        output = tmp_path / "alias.png"
        os.link(image, output)
    elif how == "symbolic-link":
        output = tmp_path / "alias.png"
        output.symlink_to(image)
    elif how == "checkpoint":
        checkpoint = output = tmp_path / "model.safetensors"
        checkpoint.write_bytes(b"weights")
    code = main([str(image), "--text", "a lesion", "--checkpoint", str(checkpoint), "-o", str(output)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    what = "the checkpoint" if how == "checkpoint" else "the input image"
    assert f"lsms-segment: error: -o {output} is {what} itself: the mask would replace it" in err
    assert image.read_bytes() == before


@pytest.mark.parametrize("tool", ["lsms-train", "lsms-eval"])
@pytest.mark.parametrize("change,message", [
    (lambda r: r.pop("units"), "missing field 'units'"),  # was: KeyError 'units' (a traceback)
    (lambda r: r.update(image=123), "field 'image' must be str, got int"),  # was: TypeError
    (lambda r: r.update(text="\u200b\u200b"), "empty expression 'text'"),  # was: accepted, then aborted lsms-eval
])
def test_training_and_evaluation_name_a_bad_dataset_line(tmp_path, capsys, tool, change, message):
    """Issue 15: lsms-train on a line without ``units`` or with ``image: 123`` ended in a traceback. Now one
    line naming the manifest line, exit 2, before a model or text encoder is loaded."""
    from lsms_core.dataset import AnnotationDataset
    from training.eval_cli import main as eval_main
    from training.train_cli import main as train_main

    root = tmp_path / "d"
    dataset = AnnotationDataset.create(root)
    image, mask = np.zeros((32, 32), np.float32), np.zeros((32, 32), bool)
    for split, value in (("train", 0.0), ("test", 5.0), ("test", 9.0)):
        dataset.add(image + value, mask, "the lesion", split=split, split_group=f"p-{value:g}", modality="CT",
                    units="HU")
    lines = (root / "annotations.jsonl").read_text().splitlines()
    record = json.loads(lines[2])
    change(record)
    lines[2] = json.dumps(record)
    (root / "annotations.jsonl").write_text("\n".join(lines) + "\n")
    if tool == "lsms-train":
        code = train_main([str(root), "-o", str(tmp_path / "run"), "--no-progress", "--device", "cpu",
                           "--preset", "lsms-tiny", "--image-size", "64", "--epochs", "1"])  # short if it fails
    else:
        code = eval_main([str(root), "--split", "test", "--device", "cpu", "--json"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"{tool}: error: {root / 'annotations.jsonl'} line 3: ") and message in err, err
    assert "lsms-data validate" in err
