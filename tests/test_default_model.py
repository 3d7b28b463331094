"""The shipped default model: self-describing, used when no checkpoint is named, and as good on
RefLiTS's test split as its model card says (a regression guard, not a timing)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lsms_core.checkpoint import DEFAULT_CHECKPOINT, read_checkpoint, resolve_checkpoint
from lsms_core.inference import Segmenter
from training.evaluate import evaluate

CARD = DEFAULT_CHECKPOINT.parent / "MODEL_CARD.md"


def _card_figures() -> dict:
    """The JSON block of the model card: what the tests hold the shipped weights to."""
    text = CARD.read_text()
    block = text.split("```json", 1)[1].split("```", 1)[0]
    return json.loads(block)


def test_default_checkpoint_is_shipped_and_self_describing():
    path = resolve_checkpoint("default")
    assert path == DEFAULT_CHECKPOINT
    stored = read_checkpoint(path)
    assert stored.config.preset == "lsms+select" and stored.config.model.use_text
    # its LSMS is the finder (stage 2 of scripts/train_default_model.sh, lsms-train's default name)
    assert stored.config.model.select_lesions and stored.extra["base"]["name"] == "lsms"
    assert stored.config.text.name == "all-MiniLM-L6-v2" and stored.config.text.sha256
    assert stored.extra["name"] == "lsms-reflits"
    assert stored.identity["sha256"] == _card_figures()["sha256"]


@pytest.fixture(scope="module")
def reflits(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "RefLiTS"
    done = subprocess.run([sys.executable, "-m", "training.data_cli", "build-lits", str(root)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return root


def test_default_model_reaches_its_model_card_figures(reflits):
    figures = _card_figures()
    segmenter = Segmenter("default", device="cpu")
    as_is = evaluate("default", str(reflits), "test", "as-is", segmenter=segmenter)
    neutral = evaluate("default", str(reflits), "test", "neutral", segmenter=segmenter)
    assert as_is["n"] == figures["test"]["n"]
    # CPU fp32 with seeded NMF is deterministic; the margin only absorbs other CPUs' rounding.
    assert as_is["dice"] == pytest.approx(figures["test"]["dice"], abs=0.01)
    assert neutral["dice"] == pytest.approx(figures["test_neutral"]["dice"], abs=0.01)
    assert as_is["n_referring"] == figures["test"]["n_referring"]
    for key in ("hit_rate", "pointing", "leak"):
        assert as_is[key] == pytest.approx(figures["test"][key], abs=0.02)
        assert neutral[key] == pytest.approx(figures["test_neutral"][key], abs=0.02)
    # the words, not the image, choose the lesion
    assert as_is["hit_rate"] > neutral["hit_rate"] + 0.1 and as_is["leak"] < neutral["leak"] - 0.2


def _segment_sample(sample: str, output: Path) -> subprocess.CompletedProcess:
    """``lsms-segment --sample SAMPLE --text "the largest lesion" -o OUTPUT --json``, as a user runs it."""
    return subprocess.run([str(Path(sys.executable).parent / "lsms-segment"), "--sample", sample,
                           "--text", "the largest lesion", "-o", str(output), "--json"],
                          capture_output=True, text=True, timeout=300)


def test_lsms_segment_uses_the_default_model(tmp_path):
    output = tmp_path / "largest.png"
    done = _segment_sample("reflits", output)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["model"]["name"] == "lsms-reflits"
    mask = np.asarray(Image.open(output)) > 0
    assert mask.shape == (128, 128) and report["pixels"] == mask.sum() > 0
    assert report["outside_domain"] is None and "warning" not in done.stderr  # abdominal CT in HU


def test_lsms_segment_warns_when_the_image_is_outside_the_models_domain_and_still_segments(tmp_path):
    """Issue 11, item 7, on the command line: the head CT sample is not what the default model knows."""
    output = tmp_path / "head.png"
    done = _segment_sample("ct", output)
    assert done.returncode == 0, done.stderr
    [warning] = [line for line in done.stderr.splitlines() if line.startswith("lsms-segment: warning: ")]
    assert "outside what the model was trained on" in warning and "Segmenting anyway" in warning
    assert json.loads(done.stdout)["outside_domain"] in warning and output.exists()
