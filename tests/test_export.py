"""Masks out: NIfTI masks that overlay their image voxel for voxel, DICOM SEG that references its source slices
and carries no patient identifier unless asked. Real files in tmp_path, read back with nibabel and highdicom."""

from __future__ import annotations

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest

from conftest import write_ct_series
from lsms_core.dicom import read_dicom
from lsms_core.export.dicom_seg import write_dicom_seg
from lsms_core.export.nifti import write_nifti_mask
from lsms_core.preprocessing import ImageError
from lsms_core.privacy import pseudonymous_key
from lsms_core.volume_io import read_volume

LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
SECRET = "test-secret"
IDENTIFIERS = {"PatientName": "Doe^Jane^Q", "PatientID": "MRN-0042-XYZ", "PatientBirthDate": "19610823",
               "OtherPatientIDs": "ALT-55120-Q", "AccessionNumber": "ACC-77321",
               "InstitutionName": "St Example Hospital", "ReferringPhysicianName": "House^Gregory",
               "OperatorsName": "Tech^Tina", "DeviceSerialNumber": "SN-998877", "StationName": "CTROOM-7",
               "Manufacturer": "ACME Medical"}  # the make is no identifier: it stays


@pytest.fixture(autouse=True)
def _secret(monkeypatch):
    monkeypatch.setenv("LSMS_NAPARI_SECRET", SECRET)


@pytest.fixture
def ct_folder(tmp_path):
    folder = tmp_path / "series"
    folder.mkdir()
    return write_ct_series(folder, count=4, spacing_mm=2.5,
                           header={"FrameOfReferenceUID": pydicom.uid.generate_uid(), **IDENTIFIERS})


def _oblique_nifti(path, rng) -> None:
    """A sagittal-stored, slightly rotated CT volume: the mask must follow its geometry, not assume axial."""
    c, s = np.cos(0.25), np.sin(0.25)
    affine = np.eye(4)
    affine[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.array([[0, 0, 0.9], [0.8, 0, 0], [0, -2.0, 0]])
    affine[:3, 3] = [10.0, -20.0, 30.0]
    nib.save(nib.Nifti1Image(rng.integers(-1024, 400, (12, 10, 8)).astype(np.int16), affine), path)


def _marked(shape, rng, count: int = 25) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    mask[tuple(rng.integers(0, n, count) for n in shape)] = 1
    mask[0, 0, 0] = 2  # a second label, in a corner
    return mask


def _assert_overlays(mask_path, mask: np.ndarray, image_path, image_volume) -> None:
    """Read back: same shape and affine, same voxels set; and, with nibabel on the two files, every marked
    voxel of the mask file is at the world position of an image voxel holding the value the volume has there."""
    back = read_volume(mask_path, hounsfield=False)
    assert back.pixels.shape == image_volume.pixels.shape
    np.testing.assert_allclose(back.affine, image_volume.affine, atol=1e-4)
    np.testing.assert_array_equal(back.pixels, mask)
    stored = nib.load(mask_path)
    assert stored.get_data_dtype() == np.uint8 and int(stored.header["sform_code"]) == 1
    assert int(stored.header["qform_code"]) == 1
    data = np.asarray(stored.dataobj)
    marked = np.argwhere(data > 0)
    assert len(marked) == np.count_nonzero(mask)
    zrc_of_world = np.linalg.inv(image_volume.affine)
    for ijk in marked:
        world_ras = stored.affine @ [*ijk, 1]
        zrc = zrc_of_world @ (LPS @ world_ras)
        index = tuple(np.round(zrc[:3]).astype(int))
        np.testing.assert_allclose(zrc[:3], index, atol=1e-3)
        assert mask[index] == data[tuple(ijk)]
        if image_path is not None:  # the image file itself, through its own affine
            image = nib.load(image_path)
            voxel = np.linalg.inv(image.affine) @ world_ras
            source = tuple(np.round(voxel[:3]).astype(int))
            np.testing.assert_allclose(voxel[:3], source, atol=1e-3)
            assert np.asarray(image.dataobj)[source] == image_volume.pixels[index]


@pytest.mark.parametrize("name", ["mask.nii.gz", "mask.nii"])
def test_nifti_mask_of_a_nifti_volume_overlays_it(tmp_path, rng, name):
    _oblique_nifti(tmp_path / "ct.nii.gz", rng)
    volume = read_volume(tmp_path / "ct.nii.gz")
    mask = _marked(volume.pixels.shape, rng)
    assert write_nifti_mask(mask, volume, tmp_path / name) == tmp_path / name
    _assert_overlays(tmp_path / name, mask, tmp_path / "ct.nii.gz", volume)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({"ct.nii.gz", name})  # no temporary file left


def test_nifti_mask_of_a_dicom_series_lands_on_its_slices(ct_folder, tmp_path, rng):
    volume = read_dicom(ct_folder)
    mask = _marked(volume.pixels.shape, rng)
    write_nifti_mask(mask.astype(bool), volume, tmp_path / "mask.nii.gz")
    _assert_overlays(tmp_path / "mask.nii.gz", mask > 0, None, volume)
    stored = nib.load(tmp_path / "mask.nii.gz")
    for ijk in np.argwhere(np.asarray(stored.dataobj) > 0)[:10]:
        column, row, z = (int(v) for v in ijk)  # the mask is stored (column, row, slice)
        header = pydicom.dcmread(volume.files[z], stop_before_pixels=True)
        orientation = np.array(header.ImageOrientationPatient, float)
        row_spacing, col_spacing = (float(v) for v in header.PixelSpacing)
        dicom_lps = (np.array(header.ImagePositionPatient, float) + column * col_spacing * orientation[:3]
                     + row * row_spacing * orientation[3:])  # PS3.3 C.7.6.2.1.1, from that slice's own header
        np.testing.assert_allclose(LPS[:3, :3] @ (stored.affine @ [*ijk, 1])[:3], dicom_lps, atol=1e-4)


def test_nifti_mask_without_affine_uses_the_spacings(tmp_path, rng):
    np.save(tmp_path / "ct.npy", rng.normal(0, 100, (3, 8, 9)).astype(np.float32))
    volume = read_volume(tmp_path / "ct.npy")
    volume.spacing_mm, volume.slice_spacing_mm = (0.7, 0.8), 2.0
    mask = _marked(volume.pixels.shape, rng, 5)
    write_nifti_mask(mask, volume, tmp_path / "mask.nii.gz")
    stored = nib.load(tmp_path / "mask.nii.gz")
    np.testing.assert_allclose(stored.affine, np.diag([-0.8, -0.7, 2.0, 1.0]))
    np.testing.assert_array_equal(read_volume(tmp_path / "mask.nii.gz", hounsfield=False).pixels, mask)


@pytest.mark.parametrize("mask,name,message", [
    (np.zeros((3, 8, 8), np.uint8), "m.nii.gz", "the mask is \\(3, 8, 8\\) but the image volume is \\(3, 8, 9\\)"),
    (np.full((3, 8, 9), 300), "m.nii.gz", "0..255"),
    (np.zeros((3, 8, 9), np.float32), "m.nii.gz", "float32"),
    (np.zeros((3, 8, 9), np.uint8), "m.png", ".nii.gz"),
])
def test_nifti_mask_refuses_what_it_cannot_write(tmp_path, mask, name, message):
    np.save(tmp_path / "ct.npy", np.zeros((3, 8, 9), np.float32))
    volume = read_volume(tmp_path / "ct.npy")
    with pytest.raises(ImageError, match=message):
        write_nifti_mask(mask, volume, tmp_path / name)
    assert not (tmp_path / name).exists()


def _frames(seg) -> list[tuple[int, str]]:
    """(segment number, referenced source SOPInstanceUID) of every frame, from the SEG's own functional groups."""
    return [(int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber),
             str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID))
            for item in seg.PerFrameFunctionalGroupsSequence]


def _two_lesions(shape):
    first = np.zeros(shape, bool)
    first[1, 100:130, 200:240] = True
    second = np.zeros(shape, bool)
    second[2, 300:310, 50:64] = True
    second[3, 302:308, 52:60] = True
    return first, second


def test_dicom_seg_references_its_source_slices_and_holds_the_masks(ct_folder, tmp_path):
    volume = read_dicom(ct_folder)
    first, second = _two_lesions(volume.pixels.shape)
    long_text = "the lesion in the right lobe next to the portal vein, below the dome \\ the larger one"
    path = write_dicom_seg([(first, "the largest lesion"), (second, long_text)], volume, tmp_path / "seg.dcm")
    seg = hd.seg.segread(path)
    uids = volume.sop_instance_uids
    expected = [(1, uids[1]), (2, uids[2]), (2, uids[3])]  # no frame for empty slices
    assert sorted(_frames(seg)) == sorted(expected) and int(seg.NumberOfFrames) == 3
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[1, 2])
    np.testing.assert_array_equal(pixels.astype(bool), np.stack([first, second], axis=-1))
    assert seg.SegmentationType == "BINARY" and seg.SeriesDescription == "LSMS lesions"
    assert seg.Manufacturer == "lsms-napari"
    assert seg.StudyInstanceUID == pydicom.dcmread(volume.files[0], stop_before_pixels=True).StudyInstanceUID
    referenced = {str(item.ReferencedSOPInstanceUID)
                  for series in seg.ReferencedSeriesSequence for item in series.ReferencedInstanceSequence}
    assert referenced == set(uids)
    one, two = (seg.get_segment_description(n) for n in (1, 2))
    assert one.segment_label == "the largest lesion" == one.SegmentDescription
    assert two.segment_label == "the lesion in the right lobe next to the portal vein, below the"  # cut at 64
    assert two.SegmentDescription == long_text  # ST keeps the whole expression, backslash included
    for description in (one, two):
        assert description.algorithm_type.value == "AUTOMATIC"
        assert description.algorithm_identification[0].AlgorithmName == "LSMS"
        assert description.algorithm_identification[0].AlgorithmFamilyCodeSequence[0].CodeMeaning == \
            "Artificial Intelligence"
        assert description.segmented_property_category.meaning == "Morphologically Abnormal Structure"
        assert description.segmented_property_type.meaning == "Neoplasm"


def test_dicom_seg_leaves_identifiers_out_unless_asked(ct_folder, tmp_path):
    volume = read_dicom(ct_folder)
    first, second = _two_lesions(volume.pixels.shape)
    plain = write_dicom_seg([(first, "a lesion"), (second, "another")], volume, tmp_path / "plain.dcm")
    data = plain.read_bytes()
    for keyword, value in IDENTIFIERS.items():
        if keyword != "Manufacturer":
            assert value.encode() not in data, keyword
    written = pydicom.dcmread(plain)
    assert written.PatientID == pseudonymous_key(IDENTIFIERS["PatientID"], "p", SECRET.encode())
    assert str(written.PatientName) == "" and written.PatientBirthDate == "" and written.AccessionNumber == ""
    assert all(value not in str(element.value) for element in written.iterall() if element.VR != "SQ"
               for keyword, value in IDENTIFIERS.items() if keyword != "Manufacturer")
    # the references a SEG needs stay
    source = pydicom.dcmread(volume.files[0], stop_before_pixels=True)
    assert written.StudyInstanceUID == source.StudyInstanceUID
    assert written.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert written.FrameOfReferenceUID == source.FrameOfReferenceUID

    kept = write_dicom_seg([(first, "a lesion")], volume, tmp_path / "kept.dcm", keep_identifiers=True)
    data = kept.read_bytes()
    for keyword in ("PatientName", "PatientID", "AccessionNumber", "InstitutionName"):
        assert IDENTIFIERS[keyword].encode() in data, keyword
    written = pydicom.dcmread(kept)
    assert str(written.PatientName) == IDENTIFIERS["PatientName"] and written.PatientID == IDENTIFIERS["PatientID"]


def test_dicom_seg_semiautomatic_when_edited(ct_folder, tmp_path):
    volume = read_dicom(ct_folder)
    first, _ = _two_lesions(volume.pixels.shape)
    path = write_dicom_seg([(first, "segment 4\\8 lesion")], volume, tmp_path / "seg.dcm",
                           algorithm_type="SEMIAUTOMATIC")
    description = hd.seg.segread(path).get_segment_description(1)
    assert description.algorithm_type.value == "SEMIAUTOMATIC"
    assert description.segment_label == "segment 4/8 lesion"  # LO: a backslash would split the value
    assert description.SegmentDescription == "segment 4\\8 lesion"


def test_dicom_seg_refuses_what_it_cannot_reference(ct_folder, tmp_path, rng):
    volume = read_dicom(ct_folder)
    first, _ = _two_lesions(volume.pixels.shape)
    out = tmp_path / "seg.dcm"
    with pytest.raises(ImageError, match="no segments"):
        write_dicom_seg([], volume, out)
    with pytest.raises(ImageError, match="segment 1 .* is \\(4, 512, 511\\) but the volume is \\(4, 512, 512\\)"):
        write_dicom_seg([(first[..., :-1], "cut")], volume, out)
    with pytest.raises(ImageError, match="segment 2 .* is empty"):
        write_dicom_seg([(first, "one"), (np.zeros_like(first), "none")], volume, out)
    _oblique_nifti(tmp_path / "ct.nii.gz", rng)
    nifti = read_volume(tmp_path / "ct.nii.gz")
    with pytest.raises(ImageError, match="not read from DICOM files"):
        write_dicom_seg([(np.ones(nifti.pixels.shape, bool), "all")], nifti, out)
    assert not out.exists()


def test_the_identifier_guard_catches_a_leak(ct_folder, tmp_path):
    """The last check before writing: a SEG holding the source's identifiers (here: built with them) is refused."""
    from lsms_core.export.dicom_seg import _check_no_identifiers

    volume = read_dicom(ct_folder)
    first, _ = _two_lesions(volume.pixels.shape)
    kept = write_dicom_seg([(first, "a lesion")], volume, tmp_path / "kept.dcm", keep_identifiers=True)
    source = pydicom.dcmread(volume.files[0], stop_before_pixels=True)
    with pytest.raises(ImageError, match="not written"):
        _check_no_identifiers(kept.read_bytes(), source, tmp_path / "x.dcm")
    plain = write_dicom_seg([(first, "a lesion")], volume, tmp_path / "plain.dcm")
    _check_no_identifiers(plain.read_bytes(), source, tmp_path / "x.dcm")  # the de-identified one passes
