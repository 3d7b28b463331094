"""The shipped models by name, and the automatic choice of one by the image (lsms_core.models)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from lsms_core.checkpoint import CheckpointError, read_stored_config, resolve_checkpoint
from lsms_core.image_io import read_slice
from lsms_core.models import SHIPPED, choose_model, resolve_auto, shipped_path


DICE_FLOOR = 0.70


def _chest_ct_in_hu() -> np.ndarray:
    yy, xx = np.mgrid[:128, :128]
    chest = np.full((128, 128), -1000.0, np.float32)
    chest[((yy - 64) / 50) ** 2 + ((xx - 64) / 60) ** 2 <= 1] = 40.0  # soft tissue
    for centre in (40, 88):
        chest[((yy - 64) / 35) ** 2 + ((xx - centre) / 18) ** 2 <= 1] = -850.0  # two lungs
    return chest


def test_every_shipped_model_is_installed_and_states_its_domain():
    for name in SHIPPED:
        config, extra = read_stored_config(name)
        assert resolve_checkpoint(name) == shipped_path(name)
        assert extra["name"] in (f"lsms-{name}", "lsms-reflits")
    assert resolve_checkpoint("default") == shipped_path("liver")
    assert read_stored_config("qata")[1]["domain"]["modalities"] == ["CR", "DX"]
    assert "CHEST" in read_stored_config("lung-ct")[1]["domain"]["body_part_terms"]


def test_auto_is_not_a_file():
    with pytest.raises(CheckpointError, match="'auto' chooses a model by the image"):
        resolve_checkpoint("auto")


@pytest.mark.parametrize("name,model,reason", [
    ("RG1_UNCI.dcm", "qata", "a radiograph (DICOM Modality CR)"),  # a MONOCHROME1 chest radiograph
    ("CT_small.dcm", "liver", "a CT slice without much lung"),
    ("693_UNCI.dcm", "liver", "a CT slice without much lung"),  # a head CT: the liver model, which warns
    ("MR-SIEMENS-DICOM-WithOverlays.dcm", "liver", "DICOM Modality MR"),
])
def test_dicom_files_choose_by_their_header(name, model, reason):
    image = read_slice(get_testdata_file(name))
    choice = choose_model(image.pixels, image.hounsfield, image.modality, image.body_part)
    assert choice.name == model and choice.reason.startswith(reason)


def test_a_nifti_ct_chooses_by_its_pixels(tmp_path, lits):
    import nibabel as nib

    from lsms_core.volume_io import read_volume

    path = tmp_path / "liver.nii.gz"
    nib.save(nib.Nifti1Image(np.ascontiguousarray(lits.hu[90:94].transpose(2, 1, 0)), np.eye(4)), path)
    volume = read_volume(path)
    seed = volume.slice(2)
    assert resolve_auto("auto", seed.pixels, seed.hounsfield, volume.modality, seed.body_part)[0] == "default"
    chest = choose_model(_chest_ct_in_hu(), True, "CT")
    assert chest.name == "lung-ct" and chest.reason.startswith("a chest CT (lung fills")
    assert choose_model(np.zeros((8, 8)), True, "CT", "CHEST").name == "lung-ct"
    assert choose_model(np.zeros((8, 8)), True, "CT", "ABDOMEN").name == "liver"


def test_a_header_less_image_is_an_xray_when_the_user_says_so():
    png = np.zeros((64, 64), np.float32)
    assert choose_model(png, False, "OT").name == "liver"
    marked = choose_model(png, False, "OT", kind="xray")
    assert (marked.name, marked.reason) == ("qata", "marked as an X-ray")
    assert choose_model(png, False, "MR", kind="xray").name == "liver"  # a header's own modality wins
    with pytest.raises(ValueError, match="image kind must be one of"):
        choose_model(png, False, kind="photo")


def test_a_model_that_is_not_installed_is_never_chosen(monkeypatch, tmp_path):
    import lsms_core.models as models

    monkeypatch.setattr(models, "WEIGHTS", tmp_path)
    choice = choose_model(None, False, "CR")
    assert choice.name == "liver" and choice.reason.endswith("the chest X-ray (lsms-qata) model is not installed")
    with pytest.raises(CheckpointError, match="the qata model is not installed"):
        resolve_checkpoint("qata")


def test_lsms_segment_says_which_model_ran_and_why(tmp_path):
    done = subprocess.run([sys.executable, "-m", "lsms_core.cli.segment", "--sample", "qata", "--text",
                           "the infection in the left lung", "-o", str(tmp_path / "m.png"), "--json", "--device", "cpu",
                           "--compiled", "off"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["model_choice"] == {"name": "qata", "reason": "a radiograph (DICOM Modality DX)"}
    assert report["model"]["name"] == "lsms-qata" and report["pixels"] > 0 and report["outside_domain"] is None
    assert "lsms-segment: model: chest X-ray (lsms-qata): a radiograph" in done.stderr
    named = subprocess.run([sys.executable, "-m", "lsms_core.cli.segment", "--sample", "qata", "--text", "a lesion",
                            "--checkpoint", "liver", "-o", str(tmp_path / "n.png"), "--json", "--device", "cpu",
                            "--compiled", "off"], capture_output=True, text=True, timeout=300)
    assert named.returncode == 0, named.stderr
    report = json.loads(named.stdout)
    assert report["model_choice"] is None and report["model"]["name"] == "lsms-reflits"
    assert "outside what the model was trained on" in report["outside_domain"]


def test_the_shipped_xray_model_on_three_real_qata_test_radiographs():
    """QaTa-COV19 test images (tests/fixtures/qata, never trained on) with their sentences in the patient's frame:
    Dice of each at least DICE_FLOOR (measured 0.74, 0.84, 0.96 with the shipped weights), and each lung's words
    land on that lung (measured: no pixel on the other lung)."""
    from PIL import Image

    from lsms_core.inference import Segmenter
    from lsms_core.metrics import dice_iou
    from training.importers.chest_sides import patient_sides
    from training.importers.qata import swap_sides

    from test_qata_import import QATA, _fixture_entries

    segmenter = Segmenter("qata", device="cpu")
    for entry in _fixture_entries():
        image = np.asarray(Image.open(QATA / entry["image_path"][5:]).convert("L")).astype(np.float32)
        truth = np.asarray(Image.open(QATA / entry["image_path"])) > 0
        mask = segmenter.segment(image, swap_sides(entry["caption"]), hounsfield=False).mask
        assert dice_iou(mask, truth)[0] >= DICE_FLOOR, entry["image_path"]
        parts = patient_sides(image, truth)
        for side in ("left", "right"):
            found = segmenter.segment(image, f"the infection in the {side} lung", hounsfield=False).mask
            other = parts["right" if side == "left" else "left"]
            assert (found & parts[side]).sum() > (found & other).sum(), (entry["image_path"], side)
