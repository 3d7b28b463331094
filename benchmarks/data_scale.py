"""Scale of data: open, validate and append to datasets of 1k, 10k and 100k annotation lines.

A seed dataset gets 8 real annotations through ``AnnotationDataset.add`` (512x512 CT-like slices,
masks, proposals, model provenance: lines as the widget writes them); its lines are then copied
with new ids (same files, 32 patient groups) up to N lines. Each N is measured in a fresh child
process (so memory is its own): ``AnnotationDataset.open``, ``validate_dataset`` (shape checks
of every file a line names; shared files are read once per line, as in a real dataset), one
``add`` to the already open dataset (what the widget does on its next save) and, in another
child, opening then appending once (a first save after start-up).

    .venv/bin/python -m benchmarks.data_scale [--lines 1000 10000 100000] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .harness import peak_rss_mb, print_table, write_results

SEED_ANNOTATIONS = 8
GROUPS = 32


def _slice_and_mask(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    image = rng.normal(60, 20, (512, 512)).astype(np.float32)
    yy, xx = np.mgrid[:512, :512]
    cy, cx, r = rng.integers(150, 350, 2).tolist() + [int(rng.integers(10, 40))]
    mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2
    return image, mask


def _annotate(dataset, rng: np.random.Generator, index: int) -> dict:
    image, mask = _slice_and_mask(rng)
    proposal = np.roll(mask, 3, axis=1)
    return dataset.add(image, mask, f"the hypodense lesion number {index} in segment VI", split_group=f"g{index % GROUPS:02d}",
                       modality="CT", units="HU", patient_key=f"pk{index % GROUPS:02d}", spacing_mm=(0.7, 0.7),
                       window={"name": "liver", "center": 60.0, "width": 160.0},
                       attributes={"lesion_type": "metastasis", "segment": "VI", "diameter_mm": 21.5},
                       expression_kinds=["type", "location"], model={"name": "lsms-reflits", "sha256": "0" * 64,
                                                                     "preset": "lsms"},
                       proposal=proposal, source={"modality": "CT", "slice": index})


def build(root: Path, lines: int) -> None:
    """A dataset folder at ``root`` with ``lines`` annotation lines over a few shared files."""
    from lsms_core.dataset import AnnotationDataset

    dataset = AnnotationDataset.create(root)
    rng = np.random.default_rng(0)
    seeds = [_annotate(dataset, rng, i) for i in range(SEED_ANNOTATIONS)]
    split_of = {r["split_group"]: r["split"] for r in seeds}
    with open(dataset.manifest, "a") as handle:
        for i in range(SEED_ANNOTATIONS, lines):
            record = dict(seeds[i % SEED_ANNOTATIONS])
            record["id"] = f"synthetic{i:08d}"
            record["split_group"] = f"g{i % GROUPS:02d}"
            record["split"] = split_of.setdefault(record["split_group"], record["split"])
            handle.write(json.dumps(record, sort_keys=True) + "\n")


def measure(root: Path, mode: str) -> dict:
    """In the child: 'open' -> open, validate, append; 'first-save' -> open + append, timed as one."""
    from lsms_core.dataset import AnnotationDataset
    from lsms_core.dataset.validate import validate_dataset

    rng = np.random.default_rng(1)
    base = peak_rss_mb()
    if mode == "first-save":
        start = time.perf_counter()
        _annotate(AnnotationDataset.open(root), rng, 10 ** 6)
        return {"open_and_append_s": time.perf_counter() - start}
    start = time.perf_counter()
    dataset = AnnotationDataset.open(root)
    opened = time.perf_counter() - start
    open_mb = peak_rss_mb() - base
    lines = len(dataset)
    start = time.perf_counter()
    problems = [p for p in validate_dataset(root) if p.severity == "error"]
    validated = time.perf_counter() - start
    appends = []
    for i in range(3):
        start = time.perf_counter()
        _annotate(dataset, rng, 2 * 10 ** 6 + i)
        appends.append(time.perf_counter() - start)
    return {"lines": lines, "open_s": opened, "open_rss_mb": open_mb, "validate_s": validated,
            "validate_errors": len(problems), "append_s": sorted(appends)[1],
            "peak_rss_mb": peak_rss_mb()}


def _child(root: Path, mode: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "benchmarks.data_scale", "--child", str(root), mode],
                          check=True, capture_output=True, text=True)
    return json.loads(next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))[len("RESULT "):])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--json", help="where to write the figures (default benchmarks/results/data_scale.json)")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(measure(Path(args.child[0]), args.child[1])))
        return 0
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for lines in args.lines:
            root = Path(folder) / f"ds{lines}"
            build(root, lines)
            size_mb = (root / "annotations.jsonl").stat().st_size / 2 ** 20
            row = {"lines": lines, "manifest_mb": size_mb, **_child(root, "open")}
            row.update(_child(root, "first-save"))
            rows.append(row)
            print(f"  {lines} lines: open {row['open_s']:.3f} s", flush=True)
    print("\nDataset scale (annotations.jsonl lines over shared files), fresh process each")
    print_table(rows, [("lines", "lines", ""), ("manifest_mb", "manifest MiB", ".1f"), ("open_s", "open s", ".3f"),
                       ("open_rss_mb", "open +MiB", ".0f"), ("validate_s", "validate s", ".2f"),
                       ("validate_errors", "errors", ""), ("append_s", "append (open) s", ".3f"),
                       ("open_and_append_s", "open+append s", ".3f"), ("peak_rss_mb", "peak MiB", ".0f")])
    write_results("data_scale", {"rows": rows}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
