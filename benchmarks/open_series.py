"""Opening a 512x512x200 DICOM CT series in napari: seconds from File > Open (``viewer.open`` with the plugin's
reader) to the 3-D layer in the viewer, the model not loaded; and ``read_volume`` alone in the same process.

The series is written once to a temporary folder: 200 copies of pydicom-data's 512x512 CT slice
(693_UNCI.dcm) at 1.25 mm steps, file names shuffled so that only the positions give the order.

    xvfb-run -a .venv/bin/python -m benchmarks.open_series [--slices 200] [--runs 3]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path


def write_series(folder: Path, count: int, spacing_mm: float = 1.25) -> Path:
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("693_UNCI.dcm"))
    base = ds.pixel_array.copy()
    names = [f"img{i:04d}.dcm" for i in range(count)]
    random.Random(1).shuffle(names)
    for i in range(count):
        ds.ImagePositionPatient = [0.0, 0.0, spacing_mm * i]
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.InstanceNumber = i + 1
        ds.PixelData = (base + (i % 7)).astype(base.dtype).tobytes()
        ds.save_as(folder / names[i])
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    import napari

    from benchmarks.harness import print_table, write_results
    from lsms_core.volume_io import read_volume

    with tempfile.TemporaryDirectory() as tmp:
        folder = write_series(Path(tmp), args.slices)
        viewer = napari.Viewer(show=False)
        rows = []
        for run in range(args.runs):
            started = time.perf_counter()
            [layer] = viewer.open(str(folder), plugin="lsms-napari")
            opened = time.perf_counter() - started
            assert layer.data.shape == (args.slices, 512, 512), layer.data.shape
            viewer.layers.clear()
            started = time.perf_counter()
            read_volume(folder)
            read = time.perf_counter() - started
            rows.append({"run": run + 1, "open_s": opened, "read_s": read})
        viewer.close()
    print_table(rows, [("run", "run", ""), ("open_s", "napari open (s)", ".2f"), ("read_s", "read_volume (s)", ".2f")])
    torch_loaded = "torch" in sys.modules
    print(f"torch imported: {torch_loaded}")
    if not args.no_write:
        write_results("open_series", {"command": "xvfb-run -a python -m benchmarks.open_series",
                                      "slices": args.slices, "rows": rows, "torch_imported": torch_loaded})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
