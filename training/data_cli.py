"""``lsms-data``: validate datasets, import/export LViT's layout, build RefLiTS from the real LiTS CT and
synthetic referring data on its slices."""

from __future__ import annotations

import argparse
import json
import sys

from lsms_core.cli.common import progress_bar, run_cli
from lsms_core.dataset.store import DatasetError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lsms-data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    validate = sub.add_parser("validate", help="check a dataset; per problem, the line and what is wrong")
    validate.add_argument("dataset")
    validate.add_argument("--deep", action="store_true", help="also decode every mask to check it is binary")
    validate.add_argument("--json", action="store_true")
    move = sub.add_parser("set-split", help="move every annotation of one split group (patient) to another split")
    move.add_argument("dataset")
    move.add_argument("group", help="the split_group (by default the patient's pseudonymous key)")
    move.add_argument("split", choices=("train", "val", "test"))
    imp = sub.add_parser("import-lvit", help="LViT layout (QaTa-COV19 / MosMedData+) -> new dataset")
    imp.add_argument("source")
    imp.add_argument("dataset")
    imp.add_argument("--modality", default="OT", help="DICOM modality of the images (CR, CT, ...; default OT)")
    exp = sub.add_parser("export-lvit", help="dataset -> LViT layout")
    exp.add_argument("dataset")
    exp.add_argument("output")
    exp.add_argument("--style", choices=("qata", "mosmed"), default="qata",
                     help="qata: masks named mask_<image>; mosmed: masks share the image's name")
    lits = sub.add_parser("build-lits", help="build RefLiTS from the LiTS volume of liver-ct-segmentation-package")
    lits.add_argument("dataset")
    lits.add_argument("--min-area", type=int, default=20, help="smallest lesion (px) that gets expressions")
    lits.add_argument("--per-lesion", type=int, default=6, help="at most this many expressions per lesion")
    lits.add_argument("--gap", type=int, default=5, help="slices left out between train/val/test blocks (>= 5)")
    lits.add_argument("--seed", type=int, default=0)
    lits.add_argument("--oblique-per-block", type=int, default=0,
                      help="extra training slices per training block, resampled on slightly tilted planes "
                           "(val/test unchanged)")
    lits.add_argument("--max-tilt", type=float, default=6.0, help="largest tilt of those planes, degrees")
    synth = sub.add_parser("build-synth", help="synthetic lesions inserted into LiTS slices, with referring "
                                               "expressions (backgrounds of each split from its RefLiTS blocks)")
    synth.add_argument("dataset")
    synth.add_argument("--train", type=int, default=1500, help="synthetic training slices")
    synth.add_argument("--val", type=int, default=100, help="synthetic validation slices")
    synth.add_argument("--test", type=int, default=200, help="synthetic test slices")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--per-lesion", type=int, default=3, help="at most this many expressions per lesion")
    synth.add_argument("--min-area", type=int, default=20, help="smallest lesion (px) that gets expressions")
    synth.add_argument("--gap", type=int, default=5, help="slices left out between RefLiTS blocks (>= 5)")
    synth.add_argument("--absent-share", type=float, default=0.1,
                       help="about this share of expressions fit no lesion (empty target)")
    synth.add_argument("--mass-effect", type=float, default=0.3, help="probability of a mass effect per lesion")
    synth.add_argument("--capsule", type=float, default=0.2, help="probability of a capsule rim per lesion")
    synth.add_argument("--vary-backgrounds", action="store_true",
                       help="training backgrounds: each a new image (a slightly tilted plane inside a training "
                            "block, rotated, zoomed, shifted and elastically deformed) instead of an axial slice; "
                            "validation and test stay axial (docs/training.md)")
    synth.add_argument("--min-real-lesions", type=int, default=0, metavar="N",
                       help="training backgrounds only from slices with >= N real tumours (crowded slices; "
                            "the train split's 47 backgrounds hold 6.0 on average, 22 of them >= 7); "
                            "validation and test unchanged")
    synth.add_argument("--densities", type=float, nargs=3, default=None, metavar=("HYPO", "HYPER", "ISO"),
                       help="relative shares of hypodense, hyperdense and isodense synthetic lesions "
                            "(default 0.65 0.15 0.20); e.g. 0.3 0.35 0.35 for a finder that must learn the rarer kinds")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli("lsms-data", lambda: COMMANDS[args.command](args))


def _validate(args: argparse.Namespace) -> int:
    """Problems (errors fail), then per split its annotations and patients; an empty split is a warning."""
    from lsms_core.dataset import AnnotationDataset
    from lsms_core.dataset.validate import empty_split_problems, split_counts, validate_dataset

    problems = validate_dataset(args.dataset, deep=args.deep)
    try:
        counts = split_counts(AnnotationDataset.open(args.dataset))
    except DatasetError:  # not a dataset at all: validate_dataset said so
        counts = {}
    problems += empty_split_problems(counts)
    errors = [p for p in problems if p.severity == "error"]
    if args.json:
        print(json.dumps({"ok": not errors, "errors": [str(p) for p in errors],
                          "warnings": [str(p) for p in problems if p.severity != "error"],
                          "splits": {split: vars(count) for split, count in counts.items()}}))
    else:
        for problem in problems:
            print(problem)
        if counts:
            print("split   annotations  patients  groups")
            for split, count in counts.items():
                print(f"{split:<6} {count.annotations:>12} {count.patients:>9} {count.groups:>7}")
        if not errors:
            total = sum(count.annotations for count in counts.values())
            print(f"{args.dataset}: valid, {total} annotations"
                  + (f" ({len([p for p in problems if p.severity == 'warning'])} warning(s))" if problems else ""))
        else:
            print(f"{args.dataset}: {len(errors)} problem(s)", file=sys.stderr)
    return 1 if errors else 0


def _set_split(args: argparse.Namespace) -> int:
    from lsms_core.dataset import AnnotationDataset

    changed = AnnotationDataset.open(args.dataset).set_group_split(args.group, args.split)
    print(f"{args.dataset}: {changed} annotation(s) of group {args.group!r} moved to {args.split}"
          if changed else f"{args.dataset}: group {args.group!r} is already in {args.split}")
    return 0


def _import(args: argparse.Namespace) -> int:
    from lsms_core.dataset.lvit import import_lvit

    bar, update = progress_bar("import")
    with bar:
        dataset = import_lvit(args.source, args.dataset, modality=args.modality, progress=update)
    print(f"imported {len(dataset)} annotations into {args.dataset}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from lsms_core.dataset.lvit import export_lvit

    counts = export_lvit(args.dataset, args.output, style=args.style)
    print(f"exported {counts} to {args.output}")
    return 0


def _build_lits(args: argparse.Namespace) -> int:
    from lsms_core.dataset import AnnotationDataset
    from lsms_core.lits import load_lits_volume

    from .reflits import SOFT_TISSUE_WINDOW, build_reflits

    if args.gap < 5:
        raise DatasetError(f"--gap must be at least 5 slices so neighbouring slices do not leak, got {args.gap}")
    dataset = AnnotationDataset.create(args.dataset, modality="CT", window=SOFT_TISSUE_WINDOW,
                                       description="RefLiTS: referring expressions for the tumours of LiTS case 117")
    bar, update = progress_bar("build-lits")
    with bar:
        counts = build_reflits(load_lits_volume(), dataset.add, min_area=args.min_area, per_lesion=args.per_lesion,
                               gap=args.gap, seed=args.seed, oblique_per_block=args.oblique_per_block,
                               max_tilt_deg=args.max_tilt, progress=update)
    print(f"{'split':<6} {'slices':>7} {'lesions':>8} {'expressions':>12}")
    for split, row in counts.items():
        print(f"{split:<6} {row['slices']:>7} {row['lesions']:>8} {row['expressions']:>12}")
    print(f"RefLiTS written to {args.dataset}")
    return 0


def _build_synth(args: argparse.Namespace) -> int:
    import dataclasses
    import time

    from lsms_core.dataset import AnnotationDataset
    from lsms_core.lits import load_lits_volume

    from .background_variation import BackgroundVariation
    from .reflits import SOFT_TISSUE_WINDOW
    from .synth import background_slices, build_synth
    from .synthetic_lesions import SynthConfig, count_components

    if args.gap < 5:
        raise DatasetError(f"--gap must be at least 5 slices so neighbouring slices do not leak, got {args.gap}")
    for name in ("train", "val", "test"):
        if getattr(args, name) < 0:
            raise DatasetError(f"--{name} must be >= 0, got {getattr(args, name)}")
    if args.min_real_lesions < 0:
        raise DatasetError(f"--min-real-lesions must be >= 0, got {args.min_real_lesions}")
    for name in ("absent_share", "mass_effect", "capsule"):
        if not 0 <= getattr(args, name) <= (0.5 if name == "absent_share" else 1):
            raise DatasetError(f"--{name.replace('_', '-')} out of range: {getattr(args, name)}")
    config = dataclasses.replace(SynthConfig(), mass_effect_p=args.mass_effect, capsule_p=args.capsule)
    if args.densities is not None:
        shares = args.densities
        if min(shares) < 0 or sum(shares) <= 0:
            raise DatasetError(f"--densities must be three shares >= 0 with a positive sum, got {shares}")
        config = dataclasses.replace(config, density_p=tuple(float(v) / sum(shares) for v in shares))
    volume = load_lits_volume()
    if args.train and not background_slices(volume, gap=args.gap, min_real_lesions=args.min_real_lesions)["train"]:
        raise DatasetError(f"--min-real-lesions {args.min_real_lesions}: no training slice holds >= "
                           f"{args.min_real_lesions} real tumours; the most crowded training slice holds "
                           f"{max(len(count_components(volume.labels[z], 6)) for z in background_slices(volume)['train'])}")
    dataset = AnnotationDataset.create(args.dataset, modality="CT", window=SOFT_TISSUE_WINDOW,
                                       description="Synthetic referring lesions on the slices of LiTS case 117 "
                                                   "(backgrounds per split from RefLiTS's blocks" +
                                                   (f"; training backgrounds with >= {args.min_real_lesions} real "
                                                    "tumours" if args.min_real_lesions else "") + ")")
    started = time.perf_counter()
    bar, update = progress_bar("build-synth")
    with bar:
        counts = build_synth(volume, dataset.add, {"train": args.train, "val": args.val, "test": args.test},
                             seed=args.seed, per_lesion=args.per_lesion, progress=update, min_area=args.min_area,
                             gap=args.gap, absent_share=args.absent_share, config=config,
                             variation=BackgroundVariation() if args.vary_backgrounds else None,
                             min_real_lesions=args.min_real_lesions)
    print(f"{'split':<6} {'slices':>7} {'lesions':>8} {'expressions':>12} {'absent':>7}")
    for split, row in counts.items():
        print(f"{split:<6} {row['slices']:>7} {row['lesions']:>8} {row['expressions']:>12} {row['absent']:>7}")
    print(f"synthetic data written to {args.dataset} in {time.perf_counter() - started:.0f} s")
    return 0


COMMANDS = {"validate": _validate, "set-split": _set_split, "import-lvit": _import, "export-lvit": _export, "build-lits": _build_lits,
            "build-synth": _build_synth}

if __name__ == "__main__":
    sys.exit(main())
