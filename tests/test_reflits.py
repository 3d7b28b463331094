"""RefLiTS: built from the real LiTS volume, valid, leak-free splits, and expressions that fit
their lesion and no other lesion on the slice, checked here by measuring the slice again."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import defaultdict

import numpy as np
import pytest
from fact_check import fits, measure_lesions

from lsms_core.dataset import AnnotationDataset
from lsms_core.lits import TUMOUR
from training.reflits import resample_plane


@pytest.fixture(scope="module")
def reflits(tmp_path_factory):
    root = tmp_path_factory.mktemp("reflits") / "RefLiTS"
    done = subprocess.run([sys.executable, "-m", "training.data_cli", "build-lits", str(root),
                           "--oblique-per-block", "4"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return root, done.stdout


def test_build_then_validate_passes_and_counts_are_printed(reflits):
    root, stdout = reflits
    rows = {line.split()[0]: [int(v) for v in line.split()[1:]] for line in stdout.splitlines()
            if line.split() and line.split()[0] in ("train", "val", "test")}
    assert set(rows) == {"train", "val", "test"}
    dataset = AnnotationDataset.open(root)
    for split, (slices, lesions, expressions) in rows.items():
        records = dataset.select(split)
        assert expressions == len(records) > 0
        assert slices == len({r["image"] for r in records})
        assert 0 < lesions <= expressions
        oblique = [r for r in records if "oblique" in r["source"]]
        assert bool(oblique) == (split == "train")  # extra planes only ever in training
    done = subprocess.run([sys.executable, "-m", "training.data_cli", "validate", str(root)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def test_splits_are_blocks_with_gaps_of_at_least_five_slices(reflits):
    dataset = AnnotationDataset.open(reflits[0])
    slices = defaultdict(set)
    for record in dataset.records:
        if "axial_slice" in record["source"]:
            slices[record["split"]].add(record["source"]["axial_slice"])
    for a in slices:
        for b in slices:
            if a < b:
                closest = min(abs(i - j) for i in slices[a] for j in slices[b])
                assert closest > 5, f"{a} and {b} slices only {closest} apart"
    # Tilted training planes stay inside their training block: every voxel they sample is
    # more than 5 slices from any validation or test slice.
    held_out = slices["val"] | slices["test"]
    for record in dataset.records:
        plane = record["source"].get("oblique")
        if plane:
            gap = min(min(abs(z - plane["z_min"]), abs(z - plane["z_max"])) for z in held_out)
            inside = [z for z in held_out if plane["z_min"] <= z <= plane["z_max"]]
            assert not inside and gap > 5, f"training plane {plane} comes within {gap} slices of held-out data"


def _words(text: str) -> list[str]:
    text = text.lower()
    words = []
    text = text.replace("second largest", " second_largest ").replace("most hypodense", " darkest ")
    text = text.replace("at the liver surface", " peripheral ").replace("deep inside the liver", " central ")
    text = text.replace("biggest", "largest")
    for word in ("second_largest", "largest", "smallest", "darkest", "upper", "lower", "left", "right",
                 "peripheral", "central", "hypodense", "hyperdense", "isodense", "round", "irregular"):
        if re.search(rf"\b{word}\b", text):
            words.append(word)
    return words


def test_every_expression_fits_its_lesion_and_no_other(reflits, lits):
    dataset = AnnotationDataset.open(reflits[0])
    checked = 0
    for record in dataset.records:
        plane = record["source"].get("oblique")
        if plane:
            hu, labels, _, _ = resample_plane(lits, plane["z_centre"], plane["tilt_rows_deg"], plane["tilt_cols_deg"])
            z = f"oblique {plane}"
        else:
            z = record["source"]["axial_slice"]
            hu, labels = lits.hu[z], lits.labels[z]
        truth = dataset.read_mask(record)
        np.testing.assert_array_equal(dataset.read_image(record), hu)
        lesions, centre_r, centre_c, max_depth = measure_lesions(hu, labels)
        text = record["text"].lower()
        if re.search(r"\b(all|every)\b", text):
            np.testing.assert_array_equal(truth, labels == TUMOUR)
            continue
        targets = [x for x in lesions if np.array_equal(x["mask"], truth)]
        assert len(targets) == 1, f"{record['text']!r}: the mask is not one lesion of slice {z}"
        target = targets[0]
        if "only" in text:
            assert len(lesions) == 1, f"{record['text']!r} but slice {z} has {len(lesions)} lesions"
            continue
        words = _words(record["text"])
        assert words, f"no attribute words in {record['text']!r}"
        args = (lesions, centre_r, centre_c, max_depth)
        assert all(fits(w, target, *args) for w in words), f"{record['text']!r} does not fit its lesion (slice {z})"
        for other in lesions:
            if other is not target:
                assert not all(fits(w, other, *args) for w in words), \
                    f"{record['text']!r} also fits another lesion on slice {z}"
        checked += 1
    assert checked > 100


def test_an_untilted_plane_is_the_axial_slice(lits):
    hu, labels, z_min, z_max = resample_plane(lits, 60.0)
    np.testing.assert_array_equal(hu, lits.hu[60])
    np.testing.assert_array_equal(labels, lits.labels[60])
    assert z_min == z_max == 60.0


def test_kinds_and_long_forms_are_present(reflits):
    dataset = AnnotationDataset.open(reflits[0])
    kinds = {k for r in dataset.records for k in r["expression_kinds"]}
    assert kinds == {"size", "position", "density", "shape", "count"}
    long_forms = [r["text"] for r in dataset.records if r["text"].startswith("A ") and r["text"].endswith(".")]
    assert len(long_forms) > 30
    assert any(" part of the liver" in t and "on this slice" in t for t in long_forms)
