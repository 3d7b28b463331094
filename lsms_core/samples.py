"""Sample slices for demos, the README's first command and napari's File > Open Sample."""

from __future__ import annotations

from dataclasses import dataclass

from .image_io import Slice, read_slice

# Axial slice 100 of LiTS case 117: four tumours with expressions, in RefLiTS's test split (never trained on).
REFLITS_SLICE = 100


@dataclass(frozen=True)
class Sample:
    key: str
    title: str
    expression: str  # a sensible first expression to try


SAMPLES = {
    "reflits": Sample("reflits", "RefLiTS CT slice with several liver tumours (LiTS case 117, test split)",
                      "the largest lesion"),
    "ct": Sample("ct", "Abdominal CT slice, 512x512 DICOM (pydicom-data 693_UNCI.dcm)", "the largest lesion"),
    "xray": Sample("xray", "Chest radiograph, MONOCHROME1 DICOM (pydicom-data RG1_UNCI.dcm)", "a lesion"),
}


def load_sample(key: str) -> Slice:
    """The sample slice named ``key`` (see SAMPLES), in physical units."""
    if key == "reflits":
        from .lits import load_lits_volume

        volume = load_lits_volume()
        return Slice(volume.hu[REFLITS_SLICE], True, "CT", None, (50.0, 400.0), None, None)
    if key in ("ct", "xray"):
        from pydicom.data import get_testdata_file

        name = {"ct": "693_UNCI.dcm", "xray": "RG1_UNCI.dcm"}[key]
        path = get_testdata_file(name)
        if path is None:
            raise FileNotFoundError(f"{name} is not installed: pip install pydicom-data")
        return read_slice(path)
    raise KeyError(f"unknown sample {key!r}; choose one of {', '.join(SAMPLES)}")
