"""Which side QaTa-COV19's sentences name: the image's or the patient's.

``python -m training.importers.check_qata_sides data/QaTa`` (SGSeg's layout). On every image with infection in one
lung ("unilateral"), split the mask at the mediastinum (chest_sides) and count how often the larger part lies
on the *image's* side the sentence names. Near 1: the sentences name the image's side; near 0: the patient's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from .chest_sides import patient_sides


def image_side_agreement(root: Path, split: str) -> tuple[int, float]:
    """(unilateral images, share whose mask lies mostly on the image side the sentence names) of one split."""
    table = json.loads((root / "prompts" / "annotation.json").read_text())
    agree = []
    for entry in table[split]:
        if entry.get("pulmonary_infection") != 1:
            continue
        name = entry["image_path"]
        image = np.asarray(Image.open(root / "images" / split / "images" / name[5:]).convert("L"))
        mask = np.asarray(Image.open(root / "images" / split / "masks" / name).convert("L")) > 0
        parts = patient_sides(image, mask)
        named = "left" if "left lung" in entry["caption"] else "right"
        image_left, image_right = parts["right"].sum(), parts["left"].sum()  # the patient's right is the image's left
        agree.append((image_left > image_right) == (named == "left"))
    return len(agree), float(np.mean(agree)) if agree else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="SGSeg's data/QaTa folder")
    args = parser.parse_args(argv)
    for split in ("train", "valid", "test"):
        count, share = image_side_agreement(Path(args.root), split)
        print(f"{split}: {count} unilateral images, the mask on the image side the sentence names in {share:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
