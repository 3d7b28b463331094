"""Size limits every reader checks from a file's header, before any pixel is decoded or allocated.

One owner for the numbers, so the readers (``image_io``, ``dicom``), the dataset schema and the
validator refuse the same images (docs/reliability.md, "memory bombs"). No heavy imports here:
the dataset schema uses it.
"""

from __future__ import annotations

MAX_SLICE_PIXELS = 100_000_000  # 10000x10000: above any CT, MR or radiograph; 400 MB as float32
MAX_SIDE = 20_000  # longest side of a slice: a 1x90,000,000 strip is no medical image (and its resize to the
#                    model's input needs an antialiasing kernel of 350,000 taps per pixel)
MAX_VOLUME_PIXELS = 400_000_000  # one DICOM file or series; a 512x512 CT series of 1500 slices is 393 M pixels
MAX_VOLUME_BYTES = 2 * MAX_VOLUME_PIXELS  # its stored (16-bit) pixel data: what a deflated file may inflate to

