"""Sample slices for demos, the README's first command and napari's File > Open Sample."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .image_io import Slice, read_slice
from .windows import DEFAULT_WINDOW

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
    # A head CT (skull, brain): outside the default model's abdominal domain, and the widget says so.
    "ct": Sample("ct", "Head CT slice, 512x512 DICOM (pydicom-data 693_UNCI.dcm)", "the largest lesion"),
    "xray": Sample("xray", "Chest radiograph, MONOCHROME1 DICOM (pydicom-data RG1_UNCI.dcm)", "a lesion"),
    # An abdominal MR slice whose liver lesion a reader outlined in the file (overlay 6000).
    "mr": Sample("mr", "Abdominal MR slice, liver lesion outlined in the file, DICOM "
                 "(pydicom-data MR-SIEMENS-DICOM-WithOverlays.dcm)", "the lesion in the right lobe"),
    # Real patients' images of the public sets the chest models were trained on, from their test splits.
    "qata": Sample("qata", "Chest radiograph with COVID-19 infection (QaTa-COV19 test split; SGSeg's copy, MIT)",
                   "the infection in the left lung"),
    "lung-ct": Sample("lung-ct", "Chest CT slice with COVID-19 infection (MedSeg COVID-19 CT set, test split; "
                      "Inf-Net's copy, MIT; lung-windowed grey, not HU)", "the lung infection"),
}

# The sample images shipped in the package (lsms_core/sample_images/ATTRIBUTION.md: sources and licences), with
# the DICOM Modality and BodyPartExamined a header would give them (they are PNGs: the model is chosen by these).
SAMPLE_IMAGES = {"qata": ("qata-test-chest-xray.png", "DX", "CHEST"),
                 "lung-ct": ("medseg-covid-ct-test-18.png", "CT", "CHEST")}
SAMPLE_IMAGE_DIR = Path(__file__).parent / "sample_images"


# The DICOM samples' files in pydicom-data: napari's File > Open Sample reads the same ones.
DICOM_SAMPLE_FILES = {"ct": "693_UNCI.dcm", "xray": "RG1_UNCI.dcm", "mr": "MR-SIEMENS-DICOM-WithOverlays.dcm"}


def dicom_sample_path(key: str) -> str:
    """The installed pydicom-data file of DICOM sample ``key`` ("ct", "xray" or "mr")."""
    from pydicom.data import get_testdata_file

    name = DICOM_SAMPLE_FILES[key]
    path = get_testdata_file(name)
    if path is None:
        raise FileNotFoundError(f"{name} is not installed: pip install pydicom-data")
    return str(path)


def load_sample(key: str) -> Slice:
    """The sample slice named ``key`` (see SAMPLES), in physical units."""
    if key == "reflits":
        from .lits import load_lits_volume

        volume = load_lits_volume()
        return Slice(volume.hu[REFLITS_SLICE], True, "CT", None, (DEFAULT_WINDOW.center, DEFAULT_WINDOW.width),
                     None, None)
    if key in DICOM_SAMPLE_FILES:
        return read_slice(dicom_sample_path(key))
    if key in SAMPLE_IMAGES:
        name, modality, body_part = SAMPLE_IMAGES[key]
        image = read_slice(SAMPLE_IMAGE_DIR / name, hounsfield=False)
        return Slice(image.pixels, False, modality, None, None, None, image.source, None, body_part)
    raise KeyError(f"unknown sample {key!r}; choose one of {', '.join(SAMPLES)}")
