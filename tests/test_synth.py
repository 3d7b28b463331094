"""Synthetic referring data (lsms-data build-synth): checked on what it wrote, by measuring again.

The output labels of a synthetic slice are rebuilt from the real LiTS labels of its background (the
axial slice, or with --vary-backgrounds the image rebuilt from the stored parameters) and the masks it stored ("all lesions" is every tumour pixel), then every lesion is measured here,
independently of the fact engine, and every expression is checked against those measurements.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import defaultdict

import numpy as np
import pytest
from scipy import ndimage

from fact_check import fits, measure_lesions

from lsms_core.dataset import AnnotationDataset
from lsms_core.lits import LIVER, TUMOUR
from training.background_variation import render_background
from training.reflits import block_splits
from training.synthetic_lesions import SynthConfig

EIGHT = np.ones((3, 3), dtype=bool)


def _build(root, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "training.data_cli", "build-synth", str(root), *args],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module", params=["axial", "varied"])
def synth(request, tmp_path_factory):
    """A small build; "varied": training backgrounds drawn with --vary-backgrounds (test stays axial)."""
    root = tmp_path_factory.mktemp("synth") / "synth"
    extra = ["--vary-backgrounds"] if request.param == "varied" else []
    stdout = _build(root, "--train", "30", "--val", "0", "--test", "10", "--seed", "0", "--per-lesion", "3", *extra)
    return root, stdout


def _background(source: dict, lits) -> tuple[np.ndarray, np.ndarray, str]:
    """HU, labels and a name of the background a synthetic slice was drawn on."""
    if "axial_slice" in source:
        z = source["axial_slice"]
        return lits.hu[z], lits.labels[z], f"z={z}"
    hu, labels = render_background(lits, source["background"])
    return hu, labels, f"varied background in z {source['background']['block_z']}"


@pytest.fixture(scope="module")
def slices(synth, lits):
    """Per stored image: its records, the rebuilt output labels, the output HU and its background."""
    dataset = AnnotationDataset.open(synth[0])
    by_image = defaultdict(list)
    for record in dataset.records:
        by_image[record["image"]].append(record)
    out = []
    for records in by_image.values():
        where = {k: v for k, v in records[0]["source"].items() if k in ("axial_slice", "background")}
        assert len(where) == 1 and all(r["source"].get(k) == v for r in records for k, v in where.items())
        background_hu, background_labels, name = _background(records[0]["source"], lits)
        masks = [dataset.read_mask(r) for r in records]
        labels = background_labels.copy()
        labels[np.logical_or.reduce(masks)] = TUMOUR
        out.append({"records": records, "masks": masks, "labels": labels, "hu": dataset.read_image(records[0]),
                    "z": name, "background_hu": background_hu, "background_labels": background_labels,
                    "synthetic": records[0]["source"]["synthetic"]})
    return out


def _words(text: str) -> list[str]:
    text = text.lower().replace("second largest", " second_largest ").replace("most hypodense", " darkest ")
    text = text.replace("at the liver surface", " peripheral ").replace("deep inside the liver", " central ")
    return [w for w in ("second_largest", "largest", "smallest", "darkest", "upper", "lower", "left", "right",
                        "peripheral", "central", "hypodense", "hyperdense", "isodense", "round", "irregular")
            if re.search(rf"\b{w}\b", text)]


def test_table_counts_and_validation(synth):
    root, stdout = synth
    rows = {line.split()[0]: [int(v) for v in line.split()[1:]] for line in stdout.splitlines()
            if line.split() and line.split()[0] in ("train", "val", "test")}
    assert rows["train"][0] == 30 and rows["val"] == [0, 0, 0, 0] and rows["test"][0] == 10
    dataset = AnnotationDataset.open(root)
    for split, (n_slices, lesions, expressions, absent) in rows.items():
        records = dataset.select(split)
        assert expressions == len(records)
        assert n_slices == len({r["image"] for r in records}) == len({r["split_group"] for r in records})
        assert absent == sum(1 for r in records if r["attributes"].get("count") == "none")
        assert lesions <= expressions
    absent = sum(r[3] for r in rows.values())
    total = sum(r[2] for r in rows.values())
    assert 0.04 <= absent / total <= 0.2, f"{absent} absent of {total}"
    for record in dataset.records:
        assert record["split_group"].startswith(f"synth-{record['split']}-")
        assert record["provenance"]["user"] == "lsms-data build-synth"
        assert record["modality"] == "CT" and record["units"] == "HU" and record["patient_key"] == "lits-117"
        assert record["source"]["dataset"] == "synthetic on LiTS case 117"
        assert record["source"]["synthetic"], "every slice has at least one synthetic lesion"
        assert record.get("instance") == record["source"]["lesion"]
    done = subprocess.run([sys.executable, "-m", "training.data_cli", "validate", str(root)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_expression_fits_its_lesion_and_no_other(slices):
    checked = absent = 0
    for item in slices:
        hu, labels, z = item["hu"], item["labels"], item["z"]
        lesions, centre_r, centre_c, max_depth = measure_lesions(hu, labels)
        per_slice_absent = 0
        instance_masks: dict[int, np.ndarray] = {}
        for record, truth in zip(item["records"], item["masks"]):
            text = record["text"]
            if re.search(r"\b(all|every)\b", text.lower()):
                np.testing.assert_array_equal(truth, labels == TUMOUR)
                assert record.get("instance") is None
                continue
            words = _words(text)
            if not truth.any():  # absent: fits no lesion on the slice
                assert record.get("instance") is None and record["attributes"].get("count") == "none"
                assert words and 1 <= len(words) <= 2, text
                for lesion in lesions:
                    assert not all(fits(w, lesion, lesions, centre_r, centre_c, max_depth) for w in words), \
                        f"absent {text!r} fits a lesion of slice {z}"
                per_slice_absent += 1
                absent += 1
                continue
            targets = [i for i, x in enumerate(lesions) if np.array_equal(x["mask"], truth)]
            assert len(targets) == 1, f"{text!r}: the mask is not one lesion of slice {z}"
            assert record["instance"] == targets[0], "the instance number is the lesion's index on its slice"
            assert np.array_equal(instance_masks.setdefault(targets[0], truth), truth)
            target = lesions[targets[0]]
            if "only" in text:
                assert len(lesions) == 1
                continue
            assert words, f"no attribute words in {text!r}"
            args = (lesions, centre_r, centre_c, max_depth)
            assert all(fits(w, target, *args) for w in words), f"{text!r} does not fit its lesion (slice {z})"
            for other in lesions:
                if other is not target:
                    assert not all(fits(w, other, *args) for w in words), f"{text!r} also fits another lesion"
            checked += 1
        assert per_slice_absent <= 1
    assert checked > 100 and absent > 0


def test_synthetic_lesions_lie_inside_the_liver_and_nothing_else_changes(slices):
    for item in slices:
        z, labels, hu = item["z"], item["labels"], item["hu"]
        source = item["background_labels"]
        synthetic = (labels == TUMOUR) & (source != TUMOUR)
        assert synthetic.sum() == sum(s["area_px"] for s in item["synthetic"]), "rebuilt labels miss a lesion"
        inner = ndimage.binary_erosion(source >= LIVER, EIGHT)
        assert not (synthetic & ~inner).any(), f"synthetic lesion pixels outside the liver (slice {z})"
        # each synthetic lesion its own 8-connected component, apart from real tumours
        _, n_real = ndimage.label(source == TUMOUR, structure=EIGHT)
        _, n_all = ndimage.label(labels == TUMOUR, structure=EIGHT)
        assert n_all == n_real + len(item["synthetic"])
        untouched = source != LIVER  # background and real tumours keep their exact values
        np.testing.assert_array_equal(hu[untouched], item["background_hu"][untouched])
        assert not np.array_equal(hu, item["background_hu"])


def test_backgrounds_come_from_their_splits_blocks_only(slices, synth):
    splits = block_splits(128)
    dataset = AnnotationDataset.open(synth[0])
    held_out = [z for z, (s, _) in splits.items() if s != "train"]
    seen = defaultdict(set)
    for record in dataset.records:
        if "background" in record["source"]:  # a varied training background: every voxel it reads lies in one block
            assert record["split"] == "train"
            low, high = record["source"]["background"]["block_z"]
            block = range(low, high + 1)
            assert {splits.get(z) for z in block} == {splits[low]} and splits[low][0] == "train"
            assert splits.get(low - 1) != splits[low] and splits.get(high + 1) != splits[low], "not a whole block"
            seen["train"].add(record["source"]["background"]["z_centre"])
            continue
        z = record["source"]["axial_slice"]
        assert splits.get(z, (None,))[0] == record["split"], f"{record['split']} slice from z={z}"
        seen[record["split"]].add(z)
    for z in seen["train"]:
        assert min(abs(z - h) for h in held_out) > 5, f"training background {z} within 5 slices of held-out data"
    assert len(seen["train"]) > 5


def test_same_seed_same_dataset(tmp_path):
    roots = [tmp_path / name for name in ("a", "b", "c")]
    for root, seed in zip(roots, ("5", "5", "6")):
        _build(root, "--train", "6", "--val", "2", "--test", "3", "--seed", seed)
    datasets = [AnnotationDataset.open(root) for root in roots]

    def lines(dataset):
        records = []
        for record in dataset.records:
            record = dict(record, provenance={k: v for k, v in record["provenance"].items() if k != "saved_at"})
            records.append(record)
        return records

    def files(root):
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
                if p.is_file() and p.parent.name in ("images", "masks")}

    assert lines(datasets[0]) == lines(datasets[1])
    assert files(roots[0]) == files(roots[1])
    assert lines(datasets[0]) != lines(datasets[2])
    images = [{name for name in files(root) if name.startswith("images/")} for root in roots]
    assert images[0] == images[1] and images[0].isdisjoint(images[2])


def test_density_shift_measured_on_the_output(slices):
    measured = defaultdict(list)
    for item in slices:
        hu, labels = item["hu"], item["labels"]
        synthetic = (labels == TUMOUR) & (item["background_labels"] != TUMOUR)
        components, count = ndimage.label(synthetic, structure=EIGHT)
        centres = ndimage.center_of_mass(synthetic, components, range(1, count + 1))
        for lesion in item["synthetic"]:  # found by its recorded centre (2 decimals) and area
            found = [i + 1 for i, (r, c) in enumerate(centres)
                     if abs(r - lesion["centre"][0]) <= 0.006 and abs(c - lesion["centre"][1]) <= 0.006]
            assert len(found) == 1, f"synthetic lesion {lesion} not found on slice {item['z']}"
            mask = components == found[0]
            assert mask.sum() == lesion["area_px"]
            ring = ndimage.binary_dilation(mask, iterations=6) & (labels == LIVER)
            measured[lesion["density"]].append(float(hu[mask].mean() - hu[ring].mean()))
    tolerance = 10.0  # lesions inserted later, their soft edges and mass effect can take or shade ring pixels
    assert len(measured["hypodense"]) >= 10, "too few hypodense synthetic lesions in the sample"
    low, high = SynthConfig().shift_hu
    for contrast in measured["hypodense"]:
        assert -high - tolerance <= contrast <= -low + tolerance
    for contrast in measured["hyperdense"]:
        assert low - tolerance <= contrast <= high + tolerance
    for contrast in measured["isodense"]:
        assert abs(contrast) <= 5 + tolerance
    # the draws span the range rather than sit at one value
    assert max(measured["hypodense"]) - min(measured["hypodense"]) > 0.5 * (high - low)


def test_reflits_stores_instance_numbers(lits):
    from training.reflits import build_reflits

    calls = []
    build_reflits(lits, lambda *a, **k: calls.append((a, k)) or {}, seed=0)
    assert calls
    per_slice = defaultdict(dict)
    for (image, mask, text), kwargs in ((c[0], c[1]) for c in calls):
        assert kwargs["instance"] == kwargs["source"]["lesion"]
        if kwargs["instance"] is None:
            assert re.search(r"\b(all|every)\b", text)
            continue
        key = per_slice[kwargs["source"]["axial_slice"]]
        assert np.array_equal(key.setdefault(kwargs["instance"], mask), mask), "one instance, one mask"


def test_density_shares_choose_the_kinds_and_bad_shares_are_refused(tmp_path):
    import json

    _build(tmp_path / "hyper", "--train", "6", "--val", "0", "--test", "0", "--densities", "0", "1", "0")
    densities = {lesion["density"] for line in (tmp_path / "hyper" / "annotations.jsonl").read_text().splitlines()
                 for lesion in json.loads(line)["source"].get("synthetic") or []}
    assert densities == {"hyperdense"}
    done = subprocess.run([sys.executable, "-m", "training.data_cli", "build-synth", str(tmp_path / "bad"),
                           "--densities", "0", "0", "0"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "--densities" in done.stderr and not (tmp_path / "bad").exists()


def test_min_real_lesions_draws_only_crowded_training_backgrounds(tmp_path, lits):
    import json

    from training.synth import background_slices
    from training.synthetic_lesions import count_components

    assert background_slices(lits, min_real_lesions=7)["test"] == background_slices(lits)["test"]
    _build(tmp_path / "crowded", "--train", "12", "--val", "0", "--test", "3", "--min-real-lesions", "7")
    records = [json.loads(line) for line in (tmp_path / "crowded" / "annotations.jsonl").read_text().splitlines()]
    used = defaultdict(set)
    for record in records:
        used[record["split"]].add(record["source"]["axial_slice"])
    crowded = {z for z in background_slices(lits)["train"] if len(count_components(lits.labels[z], 6)) >= 7}
    assert 5 < len(crowded) < len(background_slices(lits)["train"]), "the filter must keep some slices and drop others"
    assert used["train"] and used["train"] <= crowded, f"uncrowded training backgrounds: {used['train'] - crowded}"
    assert used["test"] <= set(background_slices(lits)["test"])  # held-out splits are not filtered
    assert any(len(count_components(lits.labels[z], 6)) < 7 for z in background_slices(lits)["test"])
    done = subprocess.run([sys.executable, "-m", "training.data_cli", "build-synth", str(tmp_path / "none"),
                           "--train", "2", "--val", "0", "--test", "0", "--min-real-lesions", "40"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and ">= 40 real tumours" in done.stderr and "most crowded" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "none").exists()
