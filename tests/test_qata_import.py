"""import-qata (SGSeg's and LViT's layouts), the patient's sides of a chest radiograph, import-pairs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lsms_core.dataset import AnnotationDataset
from lsms_core.dataset.lvit import write_text_table
from lsms_core.dataset.store import DatasetError
from lsms_core.dataset.validate import validate_dataset
from training.importers.chest_sides import mediastinum_column, patient_sides
from training.importers.pairs import import_pairs
from training.importers.qata import import_qata, patient_group, swap_sides

FIXTURES = Path(__file__).parent / "fixtures"
QATA = FIXTURES / "qata"


def _fixture_entries() -> list[dict]:
    table = json.loads((QATA / "annotation.json").read_text())
    return [{"image_path": name, **entry} for name, entry in table.items()]


def _sgseg_copy(root: Path) -> dict:
    """SGSeg's layout with the three real test radiographs: one in each split, the train one listed a second
    time under its upper-case twin (the same bytes, as the snapshot holds 5,624 images)."""
    entries = _fixture_entries()
    table = {"train": [], "valid": [], "test": []}
    for split, entry in zip(table, entries):
        name = entry["image_path"]
        (root / "images" / split / "images").mkdir(parents=True)
        (root / "images" / split / "masks").mkdir(parents=True)
        shutil.copy(QATA / name[5:], root / "images" / split / "images" / name[5:])
        shutil.copy(QATA / name, root / "images" / split / "masks" / name)
        table[split].append(entry)
    twin = entries[0]["image_path"].replace("sub-s", "sub-S")
    shutil.copy(QATA / entries[0]["image_path"][5:], root / "images" / "train" / "images" / twin[5:])
    shutil.copy(QATA / entries[0]["image_path"], root / "images" / "train" / "masks" / twin)
    table["train"].append({**entries[0], "image_path": twin})
    (root / "prompts").mkdir()
    (root / "prompts" / "annotation.json").write_text(json.dumps(table))
    return table


def test_sgseg_layout_imports_with_patient_sides_and_one_line_per_lung(tmp_path):
    table = _sgseg_copy(tmp_path / "QaTa")
    dataset, counts = import_qata(tmp_path / "QaTa", tmp_path / "ds")
    assert counts["duplicates"] == 1 and counts["images"] == 3
    assert [p for p in validate_dataset(tmp_path / "ds") if p.severity == "error"] == []
    sentences = [r for r in dataset.records if "derived" not in r["source"]]
    assert {r["split"] for r in sentences} == {"train", "val", "test"}
    for record in sentences:
        published = record["source"]["qata_caption"]
        assert record["text"] == swap_sides(published) and record["text"] != published  # every fixture names sides
        assert record["split_group"] == patient_group(record["source"]["qata_image"])
        assert record["split_group"].startswith("qata-sub-s") and record["modality"] == "DX"
        mask = dataset.read_mask(record) > 0
        name = record["source"]["qata_image"]
        np.testing.assert_array_equal(mask, np.asarray(Image.open(QATA / f"mask_{name}")) > 0)
    sides = [r for r in dataset.records if "derived" in r["source"]]
    assert len(sides) == 6  # three bilateral images, two lungs each
    for record in sides:
        whole = next(r for r in sentences if r["image"] == record["image"])
        part, all_of_it = dataset.read_mask(record) > 0, dataset.read_mask(whole) > 0
        assert part.any() and not (part & ~all_of_it).any()
        side = record["source"]["derived"].split()[0]
        assert side in record["text"] and record["instance"] == ("right", "left").index(side)
    assert dataset.info["provenance"]["source"].startswith("GitHub ShuchangYe-bib/SGSeg")
    assert "MIT" in dataset.info["provenance"]["licence"]
    assert sum(len(v) for v in table.values()) == 4


def test_as_published_keeps_the_image_sides_and_adds_no_lung_lines(tmp_path):
    _sgseg_copy(tmp_path / "QaTa")
    dataset, counts = import_qata(tmp_path / "QaTa", tmp_path / "ds", captions="as-published")
    assert counts["side_lines"] == 0
    assert all(r["text"] == r["source"]["qata_caption"] for r in dataset.records)


def test_lvit_layout_imports_too(tmp_path):
    entries = _fixture_entries()
    for folder, entry in zip(("Train", "Val", "Test"), entries):
        base = tmp_path / "lvit" / f"{folder}_Folder"
        (base / "img").mkdir(parents=True)
        (base / "labelcol").mkdir()
        shutil.copy(QATA / entry["image_path"][5:], base / "img")
        shutil.copy(QATA / entry["image_path"], base / "labelcol")
        write_text_table(base / f"{folder}_text.xlsx", [(entry["image_path"], entry["caption"])])
    dataset, counts = import_qata(tmp_path / "lvit", tmp_path / "ds")
    assert counts["images"] == 3 and counts["side_lines"] == 6
    assert dataset.info["provenance"]["layout"] == "lvit"


def test_import_qata_refuses_what_it_cannot_use(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="not a QaTa-COV19 folder"):
        import_qata(tmp_path / "empty", tmp_path / "ds")
    _sgseg_copy(tmp_path / "QaTa")
    next((tmp_path / "QaTa" / "images" / "test" / "masks").iterdir()).unlink()
    with pytest.raises(DatasetError, match="is missing; nothing was imported"):
        import_qata(tmp_path / "QaTa", tmp_path / "ds")
    assert not (tmp_path / "ds").exists() and not list(tmp_path.glob(".ds.importing-*"))


def test_the_cli_imports_and_reports(tmp_path):
    _sgseg_copy(tmp_path / "QaTa")
    done = subprocess.run([sys.executable, "-m", "training.data_cli", "import-qata", str(tmp_path / "QaTa"),
                           str(tmp_path / "ds")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "imported 3 images (9 annotations, 6 of them one lung's part; 1 duplicate images dropped)" in done.stdout


def test_sides_follow_the_radiological_convention_on_a_hand_made_radiograph():
    """A frontal radiograph shown as usual: the patient faces the viewer, so the patient's right lung is on the
    image's left. Mediastinum (bright) at column 70 of 128, off the middle; an opacity in each lung field."""
    image = np.full((100, 128), 40, np.uint8)
    image[:, 62:78] = 220  # mediastinum and spine
    image[:, :4] = image[:, -4:] = 200  # chest wall
    mask = np.zeros(image.shape, bool)
    mask[60:80, 20:40] = True  # image's left: the patient's right lung
    mask[30:45, 95:110] = True  # image's right: the patient's left lung
    assert 62 <= mediastinum_column(image, mask) <= 78
    parts = patient_sides(image, mask)
    assert parts["right"][60:80, 20:40].all() and not parts["right"][:, 64:].any()
    assert parts["left"][30:45, 95:110].all() and not parts["left"][:, :62].any()


def test_sides_on_a_real_radiograph_split_at_its_mediastinum():
    """A real QaTa test image with infection in both lungs: the split lies in the central band, each lung
    holds a good share of the mask, and the patient's left part lies on the image's right."""
    entry = _fixture_entries()[0]
    image = np.asarray(Image.open(QATA / entry["image_path"][5:]).convert("L"))
    mask = np.asarray(Image.open(QATA / entry["image_path"])) > 0
    column = mediastinum_column(image, mask)
    assert 0.3 * image.shape[1] <= column <= 0.7 * image.shape[1]
    parts = patient_sides(image, mask)
    assert min(parts["left"].sum(), parts["right"].sum()) > 0.2 * mask.sum()
    assert np.nonzero(parts["left"])[1].mean() > column > np.nonzero(parts["right"])[1].mean()


def test_import_pairs_turns_a_set_published_on_its_side(tmp_path):
    images, masks = tmp_path / "imgs", tmp_path / "gt"
    images.mkdir()
    masks.mkdir()
    shutil.copy(FIXTURES / "lung_ct" / "18.jpg", images)
    shutil.copy(FIXTURES / "lung_ct" / "18.png", masks)
    dataset, counts = import_pairs(tmp_path / "ds", [("test", str(images), str(masks))], "the lung infection",
                                   modality="CT", orient="transpose", pixels_note="windowed 8-bit grey, not HU")
    assert counts == {"train": 0, "val": 0, "test": 1}
    [record] = dataset.records
    published = np.asarray(Image.open(images / "18.jpg").convert("L"))
    np.testing.assert_array_equal(dataset.read_image(record), published.T)
    np.testing.assert_array_equal(dataset.read_mask(record) > 0, np.asarray(Image.open(masks / "18.png")).T > 127)
    assert record["units"] == "raw" and record["source"]["pixels"] == "windowed 8-bit grey, not HU"
    with pytest.raises(DatasetError, match="do not pair up: no partner for 19"):
        Image.fromarray(published).save(images / "19.png")
        import_pairs(tmp_path / "ds2", [("test", str(images), str(masks))], "the lung infection")


def test_import_pairs_moves_a_share_of_train_to_val_by_name(tmp_path, rng):
    images, masks = tmp_path / "imgs", tmp_path / "gt"
    images.mkdir()
    masks.mkdir()
    for i in range(40):
        Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(images / f"{i}.png")
        Image.fromarray((rng.random((16, 16)) > 0.5).astype(np.uint8) * 255).save(masks / f"{i}.png")
    _, first = import_pairs(tmp_path / "a", [("train", str(images), str(masks))], "x", val_share=0.25)
    _, again = import_pairs(tmp_path / "b", [("train", str(images), str(masks))], "x", val_share=0.25)
    assert first == again and 4 <= first["val"] <= 18 and first["train"] + first["val"] == 40
    a, b = AnnotationDataset.open(tmp_path / "a"), AnnotationDataset.open(tmp_path / "b")
    assert [r["split"] for r in a.records] == [r["split"] for r in b.records]


def test_the_covid_ct_set_is_put_upright_with_class_and_lung_lines(tmp_path):
    """A one-slice copy of Inf-Net's layout (test split only): transposed, the ground-glass and consolidation
    parts of the real two-class mask as instances, each lung's part, provenance."""
    from training.importers.covid_ct import FOLDERS, import_covid_ct

    root = tmp_path / "Dataset"
    images, classes = root / FOLDERS["test"][0], root / FOLDERS["test"][1]
    (images / "Imgs").mkdir(parents=True)
    (images / "GT").mkdir()
    classes.mkdir(parents=True)
    shutil.copy(FIXTURES / "lung_ct" / "18.jpg", images / "Imgs")
    shutil.copy(FIXTURES / "lung_ct" / "18.png", images / "GT")
    shutil.copy(FIXTURES / "lung_ct" / "18-classes.png", classes / "18.png")
    (root / FOLDERS["train"][0] / "Imgs").mkdir(parents=True)  # an empty training folder
    dataset, counts = import_covid_ct(root, tmp_path / "ds")
    assert counts["test"] == len(dataset.records) >= 3
    whole = next(r for r in dataset.records if "derived" not in r["source"])
    published = np.asarray(Image.open(FIXTURES / "lung_ct" / "18.jpg").convert("L"))
    np.testing.assert_array_equal(dataset.read_image(whole), published.T)
    truth = np.asarray(Image.open(FIXTURES / "lung_ct" / "18-classes.png")).T
    for record in dataset.records:
        derived = record["source"].get("derived")
        if derived in ("ground-glass opacity", "consolidation"):
            value = 1 if derived == "ground-glass opacity" else 2
            np.testing.assert_array_equal(dataset.read_mask(record) > 0, truth == value)
            assert record["instance"] == value - 1 and record["units"] == "raw"
    assert "Inf-Net @ e9adc05b" in dataset.info["provenance"]["source"]
    assert [p for p in validate_dataset(tmp_path / "ds") if p.severity == "error"] == []
