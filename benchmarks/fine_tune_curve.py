"""What fine-tuning the default model on a user's corrections does to the slices next to them.

The widget's Train fine-tunes the model in use (issue 11, item 3). This measures it on RefLiTS's val and
test slices, which the default model never trained on: N of them (the largest N's slices evenly spread
over those with an "all lesions" annotation, each smaller N's evenly spread over those) play slices a user
corrected, each contributing one annotation, its "all lesions" mask (the expression of kind "count");
the default model is fine-tuned on those N annotations with the widget's settings (``--init-checkpoint
default``, 5 epochs, 256 px, lr 3e-4, batch 8, augmentation; the lesion selector kept, the finder
trained). Then every val/test slice outside the largest N's set (the chosen slices' neighbours in the
same blocks; one fixed set for every N) is scored with all its expressions as ``lsms-eval`` does.
N = 0 is the default model.

    .venv/bin/python -m benchmarks.fine_tune_curve data/RefLiTS --sizes 5 10 20

Prints one row per N (Dice, mIoU, hit rate, pointing, leak, seconds) and a JSON line.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def chosen_slices(images: list[str], count: int) -> list[str]:
    """``count`` of the ``images`` (in dataset order), evenly spread over them."""
    if count == 0:
        return []
    return [images[int(i)] for i in np.linspace(0, len(images) - 1, count).round()]


def subset(source: Path, target: Path, train_images: set[str], test_images: set[str]) -> Path:
    """A dataset folder at ``target`` sharing ``source``'s files: the "count" annotation of each of
    ``train_images`` in "train", every annotation of ``test_images`` in "test", none in "val"."""
    target.mkdir(parents=True)
    (target / "dataset.json").write_text((source / "dataset.json").read_text())
    for folder in ("images", "masks"):
        (target / folder).symlink_to((source / folder).resolve(), target_is_directory=True)
    lines = []
    for line in (source / "annotations.jsonl").read_text().splitlines():
        record = json.loads(line)
        correction = record["image"] in train_images and "count" in (record.get("expression_kinds") or ())
        if correction or record["image"] in test_images:
            record["split"] = "train" if correction else "test"
            lines.append(json.dumps(record))
    (target / "annotations.jsonl").write_text("\n".join(lines) + "\n")
    return target


def fine_tune(dataset: Path, output: Path, epochs: int, image_size: int, seed: int) -> Path:
    """The widget's Train on ``dataset`` from the default model; the checkpoint it offers ("Use new model")."""
    from training.config import TrainConfig
    from training.trainer import Trainer

    config = TrainConfig(dataset=str(dataset), output=str(output), preset="lsms", init_checkpoint="default",
                         image_size=image_size, epochs=epochs, batch_size=8, lr=3e-4, weight_decay=0.05,
                         augment=True, seed=seed, device="cpu", model_name="lsms-fine-tuned")
    Trainer(config, show_progress=False).run()
    return output / "best.safetensors"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", help="RefLiTS (lsms-data build-lits)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from lsms_core.dataset import AnnotationDataset
    from training.evaluate import evaluate

    source = Path(args.dataset)
    unseen = [r for r in AnnotationDataset.open(source).select(None) if r["split"] in ("val", "test")]
    images = list(dict.fromkeys(r["image"] for r in unseen))
    correctable = list(dict.fromkeys(r["image"] for r in unseen if "count" in (r.get("expression_kinds") or ())))
    largest = max(args.sizes)
    if largest >= len(correctable) or largest >= len(images):
        raise SystemExit(f"{source} has {len(correctable)} val and test slices with an 'all lesions' annotation "
                         f"({len(images)} in all): N must stay below that")
    pool = chosen_slices(correctable, largest)  # every N's slices come from this set: nested, never a neighbour
    neighbours = set(images) - set(pool)
    rows = []
    with tempfile.TemporaryDirectory(prefix="lsms-curve-") as scratch:
        for count in [0, *sorted(args.sizes)]:
            train = set(chosen_slices(pool, count))
            dataset = subset(source, Path(scratch) / f"n{count}", train, neighbours)
            start = time.perf_counter()
            checkpoint = fine_tune(dataset, Path(scratch) / f"run{count}", args.epochs, args.image_size,
                                   args.seed) if count else "default"
            seconds = time.perf_counter() - start
            report = evaluate(str(checkpoint), str(dataset), split="test", device="cpu")
            row = {"n": count, "train_annotations": len(AnnotationDataset.open(dataset).select("train")),
                   "dice": report["dice"], "miou": report["miou"], "hit_rate": report["hit_rate"],
                   "pointing": report["pointing"], "leak": report["leak"], "n_eval": report["n"],
                   "n_referring": report["n_referring"], "train_seconds": round(seconds, 1),
                   "skipped": report.get("skipped", [])}
            rows.append(row)
            print(f"N={count:>2} ({row['train_annotations']:>3} annotations): Dice {row['dice']:.4f}  mIoU "
                  f"{row['miou']:.4f}  hit {row['hit_rate']:.3f}  pointing {row['pointing']:.3f}  leak "
                  f"{row['leak']:.3f}  (eval {row['n_eval']} / {row['n_referring']} referring; train "
                  f"{row['train_seconds']} s)" + (f"; skipped {row['skipped']}" if row["skipped"] else ""), flush=True)
    print(json.dumps({"neighbour_slices": len(neighbours), "epochs": args.epochs, "image_size": args.image_size,
                      "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
