"""The model's domain (issue 11, item 7), without Qt: what a checkpoint was trained on, and why an image
lies outside it, on real bundled DICOMs (pydicom's and pydicom-data's) and the real LiTS volume."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.data import get_testdata_file
from torch import nn

from lsms_core.checkpoint import save_checkpoint
from lsms_core.config import LSMSConfig, PreprocessConfig
from lsms_core.dicom import read_dicom
from lsms_core.domain import (ImageFacts, ModelDomain, dicom_facts, domain_warning, model_domain,
                              not_hounsfield, outside_domain)


def _facts(name: str) -> ImageFacts:
    volume = read_dicom(get_testdata_file(name))
    return ImageFacts(volume.pixels[0], volume.hounsfield, volume.modality, volume.body_part)


@pytest.fixture(scope="module")
def default_domain() -> ModelDomain:
    return model_domain("default")


def test_the_default_models_domain_comes_from_its_checkpoint(default_domain):
    """The shipped checkpoint states no domain: its preprocessing gives window and input size."""
    from lsms_core.checkpoint import read_checkpoint

    shipped = read_checkpoint("default")
    preprocess = shipped.config.preprocess
    assert default_domain.modalities == ("CT",) and default_domain.units == "HU"
    assert default_domain.window == (preprocess.window_center, preprocess.window_width)
    assert default_domain.input_size == preprocess.image_size
    assert default_domain.source == ("checkpoint" if "domain" in shipped.extra else "derived")
    size = preprocess.image_size
    assert default_domain.describe() == (f"CT in HU of the abdomen (liver), window L{preprocess.window_center:g}/"
                                         f"W{preprocess.window_width:g}, {size}x{size} input")


def test_a_domain_stated_in_the_checkpoint_wins(tmp_path):
    config = LSMSConfig(preprocess=PreprocessConfig(image_size=128, window_center=40.0, window_width=80.0))
    path = save_checkpoint(tmp_path / "mr.safetensors", nn.Linear(1, 1), config,
                           extra={"name": "mr-head", "domain": {"modality": "MR", "body_region": "head"}})
    domain = model_domain(path)
    assert domain.source == "checkpoint" and domain.modalities == ("MR",) and domain.body_part_terms == ("HEAD",)
    assert domain.units == "raw" and domain.window is None and domain.input_size == 128  # size: its preprocessing
    assert ModelDomain.from_record(domain.to_record()) == domain
    assert outside_domain(ImageFacts(np.zeros((8, 8)), False, "MR", "HEAD"), domain) == []
    assert outside_domain(_facts("CT_small.dcm"), domain) == ["DICOM Modality is CT (the model knows MR)"]


def test_a_small_abdominal_ct_in_hu_is_inside(default_domain):
    """pydicom's CT_small.dcm: CT in HU, no BodyPartExamined; its statistics are those of a trunk."""
    facts = _facts("CT_small.dcm")
    assert (facts.modality, facts.body_part, facts.hounsfield) == ("CT", "", True)
    assert outside_domain(facts, default_domain) == []


def test_every_slice_of_the_lits_volume_is_inside(default_domain, lits):
    outside = {z: outside_domain(ImageFacts(lits.hu[z], True, "CT"), default_domain) for z in range(len(lits.hu))}
    assert {z: r for z, r in outside.items() if r} == {}


def test_a_head_ct_with_a_silent_header_is_told_by_its_skull(default_domain):
    """pydicom-data's 693_UNCI.dcm (the sample once called "abdominal CT") has no BodyPartExamined."""
    facts = _facts("693_UNCI.dcm")
    assert facts.body_part == ""
    [reason] = outside_domain(facts, default_domain)
    assert reason.startswith("a ring of bone encloses ") and reason.endswith("it looks like a head CT")


def test_a_chest_radiograph_is_outside_by_its_header(default_domain):
    assert outside_domain(_facts("RG1_UNCI.dcm"), default_domain) == [
        "DICOM Modality is CR (the model knows CT)",
        "DICOM BodyPartExamined is CHEST (the model knows the abdomen / liver)"]


def test_an_abdominal_mr_is_outside_by_its_modality(default_domain):
    facts = _facts("MR-SIEMENS-DICOM-WithOverlays.dcm")
    assert facts.body_part == "ABDOMEN"  # the region fits; the modality does not
    assert outside_domain(facts, default_domain) == ["DICOM Modality is MR (the model knows CT)"]


@pytest.mark.parametrize("name,modality,body_part,outside", [
    ("bad_sequence.dcm", "CT", "NECK", True), ("explicit_VR-UN.dcm", "CT", "PANCREAS", False)])
def test_the_header_alone_decides_when_it_names_the_body_part(default_domain, name, modality, body_part, outside):
    assert dicom_facts(get_testdata_file(name)) == (modality, body_part)
    reasons = outside_domain(ImageFacts(np.zeros((4, 4)), True, modality, body_part), default_domain)
    assert bool(reasons) is outside


def test_values_without_hounsfield_units_are_outside_when_the_header_is_silent(default_domain, rng):
    png = rng.integers(0, 256, (64, 64)).astype(np.float32)
    assert outside_domain(ImageFacts(png, False, "OT"), default_domain) == [
        "values 0 to 255, none of fat or air (below -30 HU): not CT in HU"]
    raw = rng.integers(2000, 24000, (64, 64)).astype(np.float32)  # radiograph-like raw values
    assert "outside the HU range of tissue" in not_hounsfield(raw)


def test_lungs_filling_the_body_say_chest(default_domain):
    yy, xx = np.mgrid[:128, :128]
    chest = np.full((128, 128), -1000.0, np.float32)
    chest[((yy - 64) / 50) ** 2 + ((xx - 64) / 60) ** 2 <= 1] = 40.0  # soft tissue
    for centre in (40, 88):
        chest[((yy - 64) / 35) ** 2 + ((xx - centre) / 18) ** 2 <= 1] = -850.0  # two lungs
    [reason] = outside_domain(ImageFacts(chest, True, "CT"), default_domain)
    assert reason.endswith("it looks like a chest CT")


def test_the_warning_says_what_the_model_knows_and_that_segmenting_goes_on(default_domain):
    text = domain_warning(["DICOM Modality is MR (the model knows CT)"], default_domain)
    assert "CT in HU of the abdomen" in text and "DICOM Modality is MR" in text and "Segmenting anyway" in text


def test_a_trained_model_states_its_training_datas_domain():
    """lsms-train's checkpoints state the modalities and units of their annotations and the run's window
    and input size; the region only when fine-tuned from a model that states one."""
    from lsms_core.domain import derive_domain, domain_of_training

    prep = PreprocessConfig(image_size=128, window_center=40.0, window_width=350.0)
    ct = [{"modality": "CT", "units": "HU"}] * 3
    scratch = domain_of_training(ct, prep)
    assert scratch.modalities == ("CT",) and scratch.units == "HU" and scratch.window == (40.0, 350.0)
    assert scratch.input_size == 128 and scratch.body_regions == () and scratch.body_part_terms == ()
    tuned = domain_of_training(ct, prep, inherited=derive_domain())
    assert tuned.body_regions == ("abdomen", "liver") and "ABD" in tuned.body_part_terms
    mixed = domain_of_training([{"modality": "MR", "units": "raw"}, {"modality": "CT", "units": "HU"}], prep)
    assert mixed.modalities == ("CT", "MR") and mixed.units == "raw" and mixed.window is None
    again = ModelDomain.from_record(tuned.to_record())  # what a checkpoint stores reads back the same
    assert again.body_regions == tuned.body_regions and again.window == tuned.window
