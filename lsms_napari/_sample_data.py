"""File > Open Sample > lsms-napari: a RefLiTS CT slice, the whole LiTS volume it comes from, a DICOM head
CT slice, a MONOCHROME1 radiograph, an abdominal MR slice with a lesion outlined in the file (opened as a
Labels layer too), and real patients' chest images of the chest models' test splits (a QaTa-COV19 radiograph,
a COVID-19 chest CT slice)."""

from __future__ import annotations

from lsms_core.dicom import Volume, read_dicom
from lsms_core.samples import REFLITS_SLICE, SAMPLES, dicom_sample_path, load_sample
from lsms_core.windows import DEFAULT_WINDOW

from .layers import drawn_layer_data, volume_layer_data


def reflits_slice() -> list[tuple]:
    """Axial slice 100 of LiTS case 117 (four tumours; RefLiTS test split) in HU."""
    image = load_sample("reflits")
    volume = Volume(image.pixels[None], True, "CT", None, None, (DEFAULT_WINDOW.center, DEFAULT_WINDOW.width),
                    [None], [], "lits-117", [])
    data, kwargs, kind = volume_layer_data(volume, f"RefLiTS slice {REFLITS_SLICE}")
    kwargs["metadata"]["lsms"]["description"] = SAMPLES["reflits"].title
    return [(data, kwargs, kind)]


def lits_volume() -> list[tuple]:
    """LiTS case 117 as a 3-D image: (128,128,128) axial slices in HU, the liver crop whose slice 100 is the
    ``reflits`` sample (its slices hold RefLiTS's training, validation and test blocks). No voxel spacing
    is stored with it: the scale is 1 per axis."""
    from lsms_core.lits import load_lits_volume

    hu = load_lits_volume().hu
    volume = Volume(hu, True, "CT", None, None, (DEFAULT_WINDOW.center, DEFAULT_WINDOW.width), [None] * len(hu), [],
                    "lits-117", [])
    data, kwargs, kind = volume_layer_data(volume, "LiTS case 117 (volume)")
    kwargs["metadata"]["lsms"]["description"] = ("LiTS case 117, liver crop, 128 axial slices in HU (RefLiTS's "
                                                 "train, val and test blocks); voxel spacing unknown")
    return [(data, kwargs, kind)]


def _dicom_sample(key: str) -> list[tuple]:
    """The sample's image layer, then its outlines drawn in the file (Labels), as the reader gives them."""
    volume = read_dicom(dicom_sample_path(key))
    name = SAMPLES[key].title.split(",")[0]
    data, kwargs, kind = volume_layer_data(volume, name)
    kwargs["metadata"]["lsms"]["description"] = SAMPLES[key].title
    return [(data, kwargs, kind), *drawn_layer_data(volume, name)]


def dicom_ct() -> list[tuple]:
    """A 512x512 head CT slice from pydicom-data (693_UNCI.dcm): outside the default model's domain."""
    return _dicom_sample("ct")


def chest_radiograph() -> list[tuple]:
    """A MONOCHROME1 chest radiograph from pydicom-data (RG1_UNCI.dcm)."""
    return _dicom_sample("xray")


def abdominal_mr() -> list[tuple]:
    """An abdominal MR slice from pydicom-data (MR-SIEMENS-DICOM-WithOverlays.dcm) and, as a Labels
    layer "drawn in the file", the liver lesion a reader outlined in its overlay plane."""
    return _dicom_sample("mr")


def _shipped_image(key: str, name: str) -> list[tuple]:
    """A sample PNG shipped in the package, with the Modality and BodyPartExamined that choose its model."""
    image = load_sample(key)
    volume = Volume(image.pixels[None], False, image.modality, None, None, None, [None], [], None, [],
                    body_part=image.body_part)
    data, kwargs, kind = volume_layer_data(volume, name)
    kwargs["metadata"]["lsms"]["description"] = SAMPLES[key].title
    return [(data, kwargs, kind)]


def qata_radiograph() -> list[tuple]:
    """A chest radiograph of QaTa-COV19's test split (224x224, 8-bit; COVID-19 infection in both lungs)."""
    return _shipped_image("qata", "QaTa-COV19 chest radiograph")


def lung_ct_slice() -> list[tuple]:
    """An axial chest CT slice of the MedSeg COVID-19 CT set's test split (lung-windowed 8-bit grey, not HU)."""
    return _shipped_image("lung-ct", "Chest CT slice (COVID-19)")
