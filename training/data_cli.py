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
    qata = sub.add_parser("import-qata", help="QaTa-COV19 (SGSeg's or LViT's layout) -> new dataset, with one line "
                                              "per lung on bilateral findings")
    qata.add_argument("source", help="SGSeg's data/QaTa folder or LViT's QaTa-COV19 folder")
    qata.add_argument("dataset")
    qata.add_argument("--captions", choices=("patient", "as-published"), default="patient",
                      help="patient: left/right of the published sentences (which name the image's side) swapped to "
                           "the patient's, as radiologists speak; as-published: kept")
    qata.add_argument("--no-sides", action="store_true", help="no per-lung lines, only the published sentences")
    qata.add_argument("--limit", type=int, help="only the first N images of each split (a small copy)")
    pairs = sub.add_parser("import-pairs", help="image and mask folders (a split per pair of folders) -> new dataset")
    pairs.add_argument("dataset")
    pairs.add_argument("--pair", nargs=3, action="append", required=True, metavar=("SPLIT", "IMAGES", "MASKS"),
                       help="a split (train, val, test) and its image and mask folders (matched by file stem); "
                            "repeatable")
    pairs.add_argument("--text", required=True, help="the expression every line gets, e.g. 'the lung infection'")
    pairs.add_argument("--modality", default="OT", help="DICOM modality of the images (CT, CR, ...; default OT)")
    pairs.add_argument("--orient", default="as-is", choices=("as-is", "transpose", "rot90", "rot180", "rot270",
                                                             "flip-lr", "flip-ud"),
                       help="put a set published on its side right (the same for masks)")
    pairs.add_argument("--group-by", metavar="REGEX", help="regular expression whose first group names the patient "
                                                            "in a file stem (default: every image its own group)")
    pairs.add_argument("--val-share", type=float, default=0.0, help="share of the train pairs moved to val, by name")
    pairs.add_argument("--prefix", default="pairs", help="prefix of the split groups")
    pairs.add_argument("--pixels-note", default="", help="what the pixels are, e.g. 'windowed 8-bit grey, not HU'")
    pairs.add_argument("--source-note", default="", help="where the set comes from (repository, commit, licence)")
    covid = sub.add_parser("import-covid-ct", help="the COVID-19 CT segmentation set (Inf-Net's Dataset folder) -> "
                                                   "new dataset with expressions from its real masks")
    covid.add_argument("source", help="Inf-Net's Dataset folder (git archive e9adc05 Dataset)")
    covid.add_argument("dataset")
    covid.add_argument("--val-share", type=float, default=0.2, help="share of the training slices moved to val")
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


def _with_progress(description: str, run):
    """``run(update)`` with a terminal progress bar whose ``update(done, total)`` it calls; returns its result."""
    bar, update = progress_bar(description)
    with bar:
        return run(update)


def _per_split(counts: dict[str, int]) -> str:
    return ", ".join(f"{split} {count}" for split, count in counts.items())


def _import(args: argparse.Namespace) -> int:
    from lsms_core.dataset.lvit import import_lvit

    dataset = _with_progress("import", lambda update: import_lvit(args.source, args.dataset, modality=args.modality,
                                                                  progress=update))
    print(f"imported {len(dataset)} annotations into {args.dataset}")
    return 0


def _import_qata(args: argparse.Namespace) -> int:
    from .importers.qata import import_qata

    _, counts = _with_progress("import-qata", lambda update: import_qata(
        args.source, args.dataset, captions=args.captions, sides=not args.no_sides, limit=args.limit, progress=update))
    print(f"imported {counts['images']} images ({counts['lines']} annotations, {counts['side_lines']} of them one "
          f"lung's part; {counts['duplicates']} duplicate images dropped) into {args.dataset}")
    return 0


def _import_pairs(args: argparse.Namespace) -> int:
    from .importers.pairs import import_pairs

    _, counts = _with_progress("import-pairs", lambda update: import_pairs(
        args.dataset, [tuple(p) for p in args.pair], args.text, modality=args.modality, orient=args.orient,
        prefix=args.prefix, group_by=args.group_by, val_share=args.val_share, pixels_note=args.pixels_note,
        provenance={"source": args.source_note} if args.source_note else None, progress=update))
    print(f"imported {sum(counts.values())} pairs ({_per_split(counts)}) into {args.dataset}")
    return 0


def _import_covid_ct(args: argparse.Namespace) -> int:
    from .importers.covid_ct import import_covid_ct

    _, counts = _with_progress("import-covid-ct", lambda update: import_covid_ct(
        args.source, args.dataset, val_share=args.val_share, progress=update))
    print(f"imported {sum(counts.values())} annotations ({_per_split(counts)}) into {args.dataset}")
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


COMMANDS = {"validate": _validate, "set-split": _set_split, "import-lvit": _import, "import-qata": _import_qata, "import-pairs": _import_pairs, "import-covid-ct": _import_covid_ct, "export-lvit": _export, "build-lits": _build_lits,
            "build-synth": _build_synth}

if __name__ == "__main__":
    sys.exit(main())
