"""lsms-eval: mean per-image Dice / mIoU through the warm inference path, per kind, neutral text."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lsms_core.dataset import AnnotationDataset
from lsms_core.inference import Segmenter
from lsms_core.metrics import dice_iou
from training.evaluate import NEUTRAL_TEXT, evaluate


def test_eval_matches_the_metric_function(tiny_checkpoint, mini_dataset):
    report = evaluate(str(tiny_checkpoint), str(mini_dataset), split="val", device="cpu")
    dataset = AnnotationDataset.open(mini_dataset)
    segmenter = Segmenter(tiny_checkpoint, device="cpu")
    scores = [dice_iou(segmenter.segment(dataset.read_image(r), r["text"], hounsfield=True).mask,
                       dataset.read_mask(r)) for r in dataset.select("val")]
    assert report["n"] == len(scores) == 6
    assert report["dice"] == pytest.approx(sum(d for d, _ in scores) / 6)
    assert report["miou"] == pytest.approx(sum(i for _, i in scores) / 6)
    kinds = {k for r in dataset.select("val") for k in r["expression_kinds"]}
    assert set(report["per_kind"]) == kinds
    assert report["model"]["name"] == "tiny-test"


def test_neutral_mode_replaces_every_expression(tiny_checkpoint, mini_dataset, monkeypatch):
    seen = []
    real = Segmenter.segment

    def spy(self, image, text, **kwargs):
        seen.append(text)
        return real(self, image, text, **kwargs)

    monkeypatch.setattr(Segmenter, "segment", spy)
    evaluate(str(tiny_checkpoint), str(mini_dataset), split="val", text_mode="neutral", device="cpu")
    assert seen and set(seen) == {NEUTRAL_TEXT}


def test_cli_json_and_errors(tiny_checkpoint, mini_dataset):
    run = lambda *a: subprocess.run([sys.executable, "-m", "training.eval_cli", *a],  # noqa: E731
                                    capture_output=True, text=True, timeout=300)
    done = run(str(mini_dataset), "--checkpoint", str(tiny_checkpoint), "--split", "val", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert {"dice", "miou", "n", "per_kind", "text_mode"} <= set(report) and report["n"] == 6
    empty = run(str(mini_dataset), "--checkpoint", str(tiny_checkpoint), "--split", "test")
    assert empty.returncode == 2 and "no annotations in split 'test'" in empty.stderr


def test_a_damaged_image_is_skipped_and_listed_not_fatal(tiny_checkpoint, mini_dataset, tmp_path):
    import shutil

    copy = tmp_path / "d"
    shutil.copytree(mini_dataset, copy)
    dataset = AnnotationDataset.open(copy)
    victim = dataset.select("val")[0]
    (copy / victim["image"]).write_bytes(b"not an npy file")
    report = evaluate(str(tiny_checkpoint), str(copy), split="val", device="cpu")
    shared = [r for r in dataset.select("val") if r["image"] == victim["image"]]
    assert {s["id"] for s in report["skipped"]} == {r["id"] for r in shared}
    assert report["n"] == 6 - len(shared)
    for record in shared:
        (copy / record["mask"]).write_bytes(b"")
    for record in dataset.select("val"):
        (copy / record["image"]).write_bytes(b"x")
    with pytest.raises(ValueError, match="no annotation of split 'val' could be scored"):
        evaluate(str(tiny_checkpoint), str(copy), split="val", device="cpu")
