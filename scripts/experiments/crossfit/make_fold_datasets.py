"""Fold datasets for finders that never see some training blocks (cross-fitted selector candidates).

    make_fold_datasets.py OUT DATASET [DATASET ...]

RefLiTS's training blocks (``training.reflits.block_splits``: blocks 0, 2, 4, 6 of the volume) are split into
two folds, A = {0, 4} and B = {2, 6} (32 axial slices each). For each fold F this writes, per DATASET,
``OUT/without-F/<name>``: the dataset without any *training* record whose slice (real, or a synthetic
slice's background, ``source.axial_slice``) lies in F's blocks; validation and test records are kept
as they are (the finder's training picks its best epoch on validation). A finder trained on
``without-F`` never saw F's slices, so its candidates there are as imperfect as on a new slice.
Images and masks are hard links (the dataset reader refuses symbolic links)."""
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from lsms_core.lits import load_lits_volume  # noqa: E402
from training.reflits import block_splits  # noqa: E402

FOLDS = {"A": (0, 4), "B": (2, 6)}


def block_of(record: dict, splits: dict) -> int | None:
    z = (record.get("source") or {}).get("axial_slice")
    return None if z is None else splits[int(z)][1]


def write_without(source: Path, target: Path, blocks: tuple[int, ...], splits: dict) -> tuple[int, int]:
    target.mkdir(parents=True, exist_ok=True)
    for folder in ("images", "masks"):
        (target / folder).mkdir(exist_ok=True)
    (target / "dataset.json").write_bytes((source / "dataset.json").read_bytes())
    kept = dropped = 0
    with open(source / "annotations.jsonl") as lines, open(target / "annotations.jsonl", "w") as out:
        for line in lines:
            record = json.loads(line)
            if record["split"] == "train" and block_of(record, splits) in blocks:
                dropped += 1
                continue
            kept += 1
            out.write(line)
            for key in ("image", "mask"):
                link = target / record[key]
                if not link.exists():
                    os.link(source / record[key], link)
    return kept, dropped


def main() -> None:
    out, datasets = Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]]
    splits = block_splits(len(load_lits_volume().hu))
    for fold, blocks in FOLDS.items():
        for dataset in datasets:
            kept, dropped = write_without(dataset, out / f"without-{fold}" / dataset.name, blocks, splits)
            print(f"without-{fold}/{dataset.name}: {kept} records kept, {dropped} training records dropped")


if __name__ == "__main__":
    main()
