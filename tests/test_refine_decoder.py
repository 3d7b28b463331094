"""Refine's own mask decoder (lsms_core/prompt/refine_decoder.py): the shipped file loads strict without
unpickling, names itself in provenance, refuses files it cannot use, and only Refine uses it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from lsms_core.lits import TUMOUR
from lsms_core.metrics import dice_iou
from lsms_core.prompt import PromptSegmenter, load_prompt_model
from lsms_core.prompt.prompt_model import WEIGHTS_SHA256, file_sha256
from lsms_core.prompt.prompts import box_of, mask_parts, refine
from lsms_core.prompt.refine_decoder import (REFINE_DECODER_FILE, RefineDecoderError, load_refine_decoder,
                                             new_mask_decoder, save_refine_decoder)

SLICE = 64  # LiTS axial slice 64: its largest tumour is 372 px of 128x128
# Refine of that tumour's filled bounding box (a rough outline, Dice 0.860 with the tumour), Dice against the
# tumour (CPU, PyTorch 2.13): measured 0.953 with the shipped decoder (LiteMedSAM's own: 0.956); the floor leaves
# 0.05 for other CPUs and builds.
REFINE_FLOOR = 0.953 - 0.05


@pytest.fixture(scope="module")
def segmenters():
    """(Refine with the shipped decoder, Refine with LiteMedSAM's own decoder)."""
    return PromptSegmenter(device="cpu", compiled="off"), PromptSegmenter(device="cpu", compiled="off",
                                                                          refine_decoder="zero-shot")


def test_the_shipped_decoder_loads_strict_and_names_itself():
    from safetensors import safe_open

    decoder, identity = load_refine_decoder()
    with safe_open(str(REFINE_DECODER_FILE), framework="pt") as opened:
        names = set(opened.keys())
        assert opened.metadata()["format"] == "lsms-refine-decoder"
    assert names == set(decoder.state_dict())  # strict: every tensor, nothing left over
    assert identity == {"name": "LiteMedSAM refine decoder", "sha256": file_sha256(REFINE_DECODER_FILE),
                        "source": "lsms_core/weights", "image_encoder_sha256": WEIGHTS_SHA256}
    zero_shot, _ = load_prompt_model()
    tuned = decoder.state_dict()
    assert any(not torch.allclose(value, tuned[name], atol=1e-3)
               for name, value in zero_shot.mask_decoder.state_dict().items())  # fine-tuned, not a copy


def test_a_saved_decoder_reads_back_within_float16(tmp_path):
    decoder = new_mask_decoder()
    path = save_refine_decoder(decoder, tmp_path / "mine.safetensors", "ab" * 32, {"script": "test"})
    loaded, identity = load_refine_decoder(path)
    for name, value in decoder.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value.half().float())
    assert identity["name"] == "mine" and identity["source"] == str(path)
    assert identity["image_encoder_sha256"] == "ab" * 32 and identity["sha256"] == file_sha256(path)


@pytest.mark.parametrize("problem, message", [
    ("missing", "does not exist"),
    ("pickle", "not a safetensors file"),
    ("truncated", "truncated or damaged"),
    ("lsms checkpoint", "not a refine decoder"),
    ("missing tensor", "does not hold LiteMedSAM's mask decoder"),
])
def test_decoder_files_that_cannot_be_used_are_refused(tmp_path, problem, message):
    path = tmp_path / "decoder.safetensors"
    state = new_mask_decoder().state_dict()
    if problem == "pickle":
        torch.save(state, path)
    elif problem == "truncated":
        path.write_bytes(REFINE_DECODER_FILE.read_bytes()[:100_000])
    elif problem == "lsms checkpoint":
        save_file({"weight": torch.zeros(2)}, str(path), metadata={"format": "lsms-checkpoint"})
    elif problem == "missing tensor":
        state.pop("iou_token.weight")
        save_file(state, str(path), metadata={"format": "lsms-refine-decoder", "format_version": "1"})
    with pytest.raises(RefineDecoderError, match=message):
        load_refine_decoder(path)
    with pytest.raises(RefineDecoderError, match=message):  # and through the prompt model, when Refine needs it
        PromptSegmenter(device="cpu", compiled="off", refine_decoder=path).refine_identity


def test_refine_outlines_with_its_decoder_and_clicks_keep_litemedsams(segmenters, lits):
    tuned, zero_shot = segmenters
    hu, tumour = lits.hu[SLICE], mask_parts(lits.labels[SLICE] == TUMOUR)[0]
    rough = np.zeros_like(tumour)
    x0, y0, x1, y1 = box_of(tumour)
    rough[y0:y1 + 1, x0:x1 + 1] = True
    for segmenter in segmenters:
        segmenter.set_image(hu, hounsfield=True)
    refined = refine(tuned, rough, agreement=0.0)
    assert refined.redrawn == 1 and dice_iou(refined.mask, tumour)[0] >= REFINE_FLOOR
    assert not np.allclose(refined.probability, refine(zero_shot, rough, agreement=0.0).probability, atol=1e-3)
    box = box_of(tumour)
    for tuned_out, zero_out in zip(tuned.predict(box=box), zero_shot.predict(box=box)):
        np.testing.assert_array_equal(tuned_out, zero_out)  # a box or click is LiteMedSAM's own decoder's
    assert tuned.refine_identity["decoder"]["sha256"] == file_sha256(REFINE_DECODER_FILE)
    assert tuned.refine_identity["sha256"] == WEIGHTS_SHA256 == zero_shot.refine_identity["decoder"]["sha256"]


def test_lsms_train_refine_writes_the_decoder_refine_then_uses_for_that_checkpoint(mini_dataset, tiny_checkpoint):
    """``lsms-train-refine`` (a few steps on real LiTS slices) writes the decoder next to the checkpoint, scores
    validation with it, and Refine picks it for that checkpoint (the shipped one for any other)."""
    import json
    import subprocess
    import sys

    from lsms_core.prompt.refine_decoder import paired_decoder_path, refine_decoder_for

    assert refine_decoder_for(tiny_checkpoint) == "default" and refine_decoder_for("default") == "default"
    done = subprocess.run([sys.executable, "-m", "training.refine_cli", str(mini_dataset), "--checkpoint",
                           str(tiny_checkpoint), "--steps", "12", "--device", "cpu", "--json"],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    paired = paired_decoder_path(tiny_checkpoint)
    assert report["out"] == str(paired) and paired.name == "tiny.refine-decoder.safetensors"
    assert report["examples"] >= 5 and report["val"]["refined"]["n"] == report["val"]["lsms"]["n"] == 6
    assert refine_decoder_for(tiny_checkpoint) == str(paired)
    decoder, identity = load_refine_decoder(paired)
    assert identity["image_encoder_sha256"] == WEIGHTS_SHA256
    zero_shot, _ = load_prompt_model()
    assert any(not torch.equal(value.half().float(), decoder.state_dict()[name])  # trained, not copied
               for name, value in zero_shot.mask_decoder.state_dict().items())
    from training.prompt_eval import evaluate_refined

    evaluated = evaluate_refined(str(tiny_checkpoint), str(mini_dataset), "val", device="cpu")  # lsms-eval --refine
    assert evaluated["prompt_model"]["decoder"]["sha256"] == file_sha256(paired)
    segmenter = PromptSegmenter(device="cpu", compiled="off")
    segmenter.use_refine_decoder(refine_decoder_for(tiny_checkpoint))
    assert segmenter.refine_identity["decoder"]["sha256"] == file_sha256(paired)
    segmenter.use_refine_decoder(refine_decoder_for("default"))
    assert segmenter.refine_identity["decoder"]["sha256"] == file_sha256(REFINE_DECODER_FILE)


def test_lsms_train_refine_refuses_what_it_cannot_use(mini_dataset, tmp_path):
    from training.refine_cli import main

    def error(argv):
        import contextlib
        import io

        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            code = main(argv)
        return code, stderr.getvalue()

    code, message = error([str(mini_dataset), "--steps", "5"])
    assert code == 2 and "--out is needed with the default checkpoint" in message
    code, message = error([str(mini_dataset), "--checkpoint", str(tmp_path / "none.safetensors")])
    assert code == 2 and "none.safetensors does not exist" in message
    code, message = error([str(tmp_path / "no-dataset"), "--out", str(tmp_path / "d.safetensors")])
    assert code == 2 and "no-dataset" in message and not (tmp_path / "d.safetensors").exists()
    code, message = error([str(mini_dataset), "--out", str(tmp_path / "d.safetensors"), "--steps", "0"])
    assert code == 2 and "--steps must be at least 1" in message
