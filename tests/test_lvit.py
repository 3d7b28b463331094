"""LViT layout (QaTa-COV19 / MosMedData+) import and export round-trip."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lsms_core.dataset import AnnotationDataset
from lsms_core.dataset.lvit import export_lvit, import_lvit, read_text_table, write_text_table
from lsms_core.dataset.validate import validate_dataset


def _make_layout(root: Path, style: str, rng) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray, str]]:
    """A small LViT folder as the papers ship it; returns what it holds, keyed by (split, mask name)."""
    content = {}
    for folder, count in (("Train", 3), ("Val", 1), ("Test", 2)):
        base = root / f"{folder}_Folder"
        (base / "img").mkdir(parents=True)
        (base / "labelcol").mkdir()
        rows = []
        for i in range(count):
            name = f"covid_{folder.lower()}_{i}.png"
            image = rng.integers(0, 256, size=(40, 48), dtype=np.uint8)
            mask = np.zeros((40, 48), bool)
            mask[5 + i:20, 10:30 - i] = True
            mask_name = f"mask_{name}" if style == "qata" else name
            Image.fromarray(image).save(base / "img" / name)
            Image.fromarray(mask.astype(np.uint8) * 255).save(base / "labelcol" / mask_name)
            text = f"Bilateral pulmonary infection, {i + 1} infected areas, lower left lung."
            rows.append((mask_name, text))
            content[(folder, mask_name)] = (image, mask, text)
        write_text_table(base / f"{folder}_text.xlsx", rows)
    return content


@pytest.mark.parametrize("style", ["qata", "mosmed"])
def test_import_then_export_round_trips(tmp_path, rng, style):
    source = tmp_path / "lvit"
    content = _make_layout(source, style, rng)
    dataset = import_lvit(source, tmp_path / "dataset", modality="CR")
    assert len(dataset) == 6
    assert {r["split"] for r in dataset.records} == {"train", "val", "test"}
    assert [p for p in validate_dataset(tmp_path / "dataset") if p.severity == "error"] == []
    counts = export_lvit(tmp_path / "dataset", tmp_path / "out", style=style)
    assert counts == {"train": 3, "val": 1, "test": 2}
    for (folder, mask_name), (image, mask, text) in content.items():
        base = tmp_path / "out" / f"{folder}_Folder"
        image_name = mask_name[5:] if style == "qata" else mask_name
        np.testing.assert_array_equal(np.asarray(Image.open(base / "img" / image_name)), image)
        np.testing.assert_array_equal(np.asarray(Image.open(base / "labelcol" / mask_name)) > 0, mask)
        assert read_text_table(base / f"{folder}_text.xlsx")[mask_name] == text


def test_cli_import_export_and_errors(tmp_path, rng):
    _make_layout(tmp_path / "lvit", "qata", rng)
    run = lambda *a: subprocess.run([sys.executable, "-m", "training.data_cli", *a],  # noqa: E731
                                    capture_output=True, text=True, timeout=120)
    done = run("import-lvit", str(tmp_path / "lvit"), str(tmp_path / "d"))
    assert done.returncode == 0, done.stderr
    assert run("validate", str(tmp_path / "d")).returncode == 0
    assert run("export-lvit", str(tmp_path / "d"), str(tmp_path / "o")).returncode == 0
    refused = run("export-lvit", str(tmp_path / "d"), str(tmp_path / "o"))  # never overwrite an export
    assert refused.returncode == 2 and "not empty" in refused.stderr
    missing = run("import-lvit", str(tmp_path / "nowhere"), str(tmp_path / "e"))
    assert missing.returncode == 2 and "not an LViT layout" in missing.stderr


def test_hu_images_export_through_their_window(tmp_path):
    dataset = AnnotationDataset.create(tmp_path / "d")
    hu = np.array([[-1000, -100, 50, 250]] * 4, np.float32)
    dataset.add(hu, np.zeros((4, 4), bool), "no lesion", split="test", split_group="p", modality="CT", units="HU",
                window={"center": 50.0, "width": 400.0})
    export_lvit(tmp_path / "d", tmp_path / "o")
    png = np.asarray(Image.open(next((tmp_path / "o" / "Test_Folder" / "img").glob("*.png"))))
    assert png[0].tolist() == [0, 32, 128, 255]  # window [-150, 250] HU -> [0, 255]


def _rename_pair(base: Path, old: str, new: str, style: str = "qata") -> None:
    """Rename an image, its mask and its row in the split's text table."""
    (base / "img" / old).rename(base / "img" / new)
    (base / "labelcol" / f"mask_{old}").rename(base / "labelcol" / f"mask_{new}")
    table = base / f"{base.name.split('_')[0]}_text.xlsx"
    rows = [(f"mask_{new}" if name == f"mask_{old}" else name, text) for name, text in read_text_table(table).items()]
    write_text_table(table, rows)


def test_names_with_spaces_are_imported(tmp_path, rng):
    """Issue 15: import-lvit stopped at an image named ``c 3.png`` (its split group had a space)."""
    source = tmp_path / "lvit"
    _make_layout(source, "qata", rng)
    _rename_pair(source / "Train_Folder", "covid_train_0.png", "c 3.png")
    _rename_pair(source / "Train_Folder", "covid_train_1.png", "c_3.png")  # would share "c_3" if only replaced
    dataset = import_lvit(source, tmp_path / "dataset")
    assert len(dataset) == 6
    groups = {r["source"]["lvit_image"]: r["split_group"] for r in dataset.records}
    assert groups["c_3.png"] == "lvit-train-c_3" and groups["c 3.png"].startswith("lvit-train-c_3-")
    assert [p for p in validate_dataset(tmp_path / "dataset") if p.severity == "error"] == []


def test_a_bad_file_is_named_and_leaves_no_partial_dataset(tmp_path, rng):
    """Issue 15: a file import-lvit could not take left a partial dataset, which the next import-lvit then refused
    to write into ("already holds a dataset"). Now the file is named, nothing is left, and the rerun works."""
    source = tmp_path / "lvit"
    _make_layout(source, "qata", rng)
    bad = source / "Test_Folder" / "img" / "covid_test_1.png"
    good = bad.read_bytes()
    bad.write_bytes(good[:60])  # truncated
    run = lambda *a: subprocess.run([sys.executable, "-m", "training.data_cli", *a],  # noqa: E731
                                    capture_output=True, text=True, timeout=120)
    done = run("import-lvit", str(source), str(tmp_path / "d"))
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert f"cannot import {bad} (mask mask_covid_test_1.png)" in done.stderr
    assert "nothing was imported" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lvit"]  # no dataset, no hidden staging folder
    bad.write_bytes(good)
    again = run("import-lvit", str(source), str(tmp_path / "d"))
    assert again.returncode == 0, again.stderr
    assert len(AnnotationDataset.open(tmp_path / "d")) == 6


def test_training_on_an_lvit_folder_leaves_no_temporary_copy(tmp_path, rng):
    """Issue 15: lsms-train on an LViT layout imported it into a temporary dataset and left it behind."""
    import os

    source = tmp_path / "qata"
    _make_layout(source, "qata", rng)
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    done = subprocess.run([sys.executable, "-m", "training.train_cli", str(source), "-o", str(tmp_path / "run"),
                           "--preset", "lsms-tiny", "--image-size", "64", "--epochs", "1", "--batch-size", "2",
                           "--lr", "1e-3", "--no-progress"], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TMPDIR": str(temporary)})
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "run" / "best.safetensors").exists()
    assert not list(temporary.glob("lsms-lvit-*"))  # (torch may leave its own cache folders there)
