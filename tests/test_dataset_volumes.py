"""3-D lesions in an annotation dataset (lsms_core.dataset.volumes, docs/dataset-format.md "3-D lesions"): a
real LiTS tumour saved as one line per slice plus a volume record, read back, updated, validated; words read
on one slice are not trained on the others; the format stays version 1."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.follow_lits import tumour_components
from lsms_core.dataset import AnnotationDataset, DatasetError
from lsms_core.dataset.validate import validate_dataset
from lsms_core.dataset.volumes import VOLUMES, lesion_mask, read_volume_records, save_lesion, volume_key, words_hold
from lsms_core.preprocessing import PreprocessConfig
from training.data import ReferringSamples


@pytest.fixture(scope="module")
def tumour(lits):
    """(volume (Z,H,W) HU, mask of the tumour on slices 26-31, its seed slice 29)."""
    components, _ = tumour_components(lits.labels)
    label = components[29][lits.labels[29] == 2].max()
    return lits.hu, components == label, 29


def _save(dataset, volume, mask, seed, **kwargs):
    arguments = dict(text="the largest lesion", seed_slice=seed, split_group="p-0000000000000001", modality="CT",
                     units="HU", spacing_mm=(0.8, 0.8), slice_spacing_mm=2.5, expression_kinds=["size"],
                     measurements={"voxels": int(mask.sum())}, followed={"engine": "lesions", "seed_slice": seed})
    return save_lesion(dataset, volume, mask, **{**arguments, **kwargs})


def test_a_lesion_is_a_line_per_slice_and_a_volume_record(tmp_path, tumour):
    volume, mask, seed = tumour
    dataset = AnnotationDataset.create(tmp_path / "d")
    slices = np.flatnonzero(mask.any(axis=(1, 2))).tolist()
    proposal = mask.copy()
    proposal[slices[0]] = False  # the follower missed the first slice; the user drew it
    saved = _save(dataset, volume, mask, seed, proposal=proposal, seed_origin="model proposal")
    assert [r["source"]["slice_index"] for r in saved.records] == slices == saved.volume["slices"]
    assert len(dataset.records) == len(slices)
    lesion = saved.volume["id"]
    for record, z in zip(saved.records, slices):
        source = record["source"]
        assert (source["lesion_id"], source["series_key"], source["seed_slice"]) == (lesion, volume_key(volume), seed)
        np.testing.assert_array_equal(dataset.read_mask(record), mask[z])
        np.testing.assert_array_equal(dataset.read_image(record), volume[z])
        assert record["provenance"]["origin"] == ("model proposal" if z == seed else "followed")
    edit = {r["source"]["slice_index"]: r["provenance"]["edit_dice"] for r in saved.records}
    assert edit[slices[0]] == 0.0 and edit[seed] == 1.0
    [record] = read_volume_records(AnnotationDataset.open(tmp_path / "d"))
    assert record == saved.volume and record["annotations"] == [r["id"] for r in saved.records]
    assert record["spacing_mm"] == [2.5, 0.8, 0.8] and record["shape"] == list(volume.shape)
    np.testing.assert_array_equal(lesion_mask(dataset, record), mask)
    assert json.loads((tmp_path / "d" / "dataset.json").read_text())["version"] == 1
    assert [p for p in validate_dataset(tmp_path / "d") if p.severity == "error"] == []


def test_words_read_on_one_slice_train_only_there_but_every_slice_trains_the_finder(tmp_path, tumour):
    volume, mask, seed = tumour
    dataset = AnnotationDataset.create(tmp_path / "d")
    sized = _save(dataset, volume, mask, seed, split="train")  # "the largest": judged on slice 29 only
    wide = _save(dataset, volume, mask, seed, text="the hypodense lesion", expression_kinds=["density"], split="train")
    typed = _save(dataset, volume, mask, seed, text="this one", expression_kinds=[], split="train")
    chosen = {r["id"] for r in dataset.select("train", expressions=True)}
    assert {r["id"] for r in sized.records if words_hold(r)} == {sized.records[3]["id"]}  # slices 26-31: 29 is 4th
    assert chosen == ({sized.records[3]["id"], typed.records[3]["id"]} | {r["id"] for r in wide.records})
    assert len(dataset.select("train")) == 3 * len(sized.records)
    prep = PreprocessConfig(image_size=64)
    words = ReferringSamples(dataset, "train", prep)
    finder = ReferringSamples(dataset, "train", prep, finder=True)
    assert len(words) == len(chosen) and len(finder) == len(sized.records)  # one "all lesions" per slice
    assert all(len(r["union_of"]) == 3 for r in finder.records)


def test_updating_a_lesion_replaces_its_lines_files_and_record(tmp_path, tumour):
    volume, mask, seed = tumour
    dataset = AnnotationDataset.create(tmp_path / "d")
    other = _save(dataset, volume, mask, seed, text="the hypodense lesion")
    first = _save(dataset, volume, mask, seed)
    smaller = mask.copy()
    smaller[np.flatnonzero(mask.any(axis=(1, 2)))[-1]] = False  # the user cut the last slice off
    second = _save(dataset, volume, smaller, seed, replaces=first.volume["id"])
    records = AnnotationDataset.open(tmp_path / "d").records
    assert [r["id"] for r in records] == [r["id"] for r in other.records + second.records]
    assert not any((tmp_path / "d" / r["mask"]).exists() for r in first.records)
    assert all((tmp_path / "d" / r["image"]).exists() for r in records)  # images still used stay
    volumes = read_volume_records(dataset)
    assert [v["id"] for v in volumes] == [other.volume["id"], second.volume["id"]]
    assert volumes[1]["provenance"]["replaces"] == first.volume["id"]
    np.testing.assert_array_equal(lesion_mask(dataset, volumes[1]), smaller)
    with pytest.raises(DatasetError, match="is not in"):
        _save(dataset, volume, mask, seed, replaces=first.volume["id"])
    assert len(AnnotationDataset.open(tmp_path / "d").records) == len(records)  # nothing written


def test_bad_lesions_are_refused_and_the_validator_finds_broken_records(tmp_path, tumour):
    volume, mask, seed = tumour
    dataset = AnnotationDataset.create(tmp_path / "d")
    with pytest.raises(DatasetError, match="empty on every slice"):
        _save(dataset, volume, np.zeros_like(mask), seed)
    with pytest.raises(DatasetError, match="seed slice 40 is not one of"):
        _save(dataset, volume, mask, 40)
    with pytest.raises(DatasetError, match="needs a"):
        _save(dataset, volume[0], mask[0], seed)
    assert dataset.records == [] and not (tmp_path / "d" / VOLUMES).exists()
    saved = _save(dataset, volume, mask, seed)
    path = tmp_path / "d" / VOLUMES
    line = path.read_bytes()
    path.write_bytes(line + b'{"id": "torn')  # an interrupted save's tail is ignored
    assert [v["id"] for v in read_volume_records(dataset)] == [saved.volume["id"]]
    broken = {**saved.volume, "slices": saved.volume["slices"][::-1]}
    path.write_text(json.dumps(broken) + "\n")
    errors = [str(p) for p in validate_dataset(tmp_path / "d") if p.severity == "error"]
    assert errors and all("is not slice" in e for e in errors)
    path.unlink()  # the record lost: the slices stay valid annotations, with a warning
    problems = validate_dataset(tmp_path / "d")
    assert [p for p in problems if p.severity == "error"] == []
    assert any("no record in volumes.jsonl" in str(p) for p in problems)


@pytest.mark.parametrize("field, value", [("annotations", [["a"]]), ("slices", ["26"]), ("id", ["x"]),
                                          ("split", "holdout"), ("seed_slice", 3), ("shape", None), ("text", 7)])
def test_a_volume_record_of_the_wrong_content_is_an_error_not_a_crash(tmp_path, tumour, field, value):
    volume, mask, seed = tumour
    dataset = AnnotationDataset.create(tmp_path / "d")
    saved = _save(dataset, volume, mask, seed)
    (tmp_path / "d" / VOLUMES).write_text(json.dumps({**saved.volume, field: value}) + "\n")
    errors = [str(p) for p in validate_dataset(tmp_path / "d") if p.severity == "error"]
    assert errors and all(VOLUMES in e for e in errors)
    with pytest.raises(DatasetError, match=f"lesion {saved.volume['id'] if field != 'id' else ''}"):
        lesion_mask(dataset, read_volume_records(dataset)[0])
