"""Masks out of the plugin, into the formats other tools read: NIfTI (``nifti``) and DICOM SEG (``dicom_seg``).

Both take a ``lsms_core.dicom.Volume`` (from ``lsms_core.volume_io.read_volume`` or ``lsms_core.dicom.read_dicom``)
and masks (Z,H,W) in its voxel order, and write atomically (``lsms_core.atomic``). Import the submodule you
need: ``dicom_seg`` imports highdicom, ``nifti`` nibabel.
"""
