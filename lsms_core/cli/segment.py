"""``lsms-segment``: segment the lesion a referring expression names on one slice -> mask PNG; with
``--follow``, follow it through a volume's slices -> a 3-D mask (NIfTI in the volume's geometry, or .npy)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from .common import run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lsms-segment", description=__doc__)
    parser.add_argument("image", nargs="?", help="a DICOM file, a PNG/JPEG/TIFF, or a .npy array (HU for CT); "
                        "with --follow: a DICOM series folder, a NIfTI/NRRD file or a (Z,H,W) .npy")
    parser.add_argument("--sample", choices=("reflits", "ct", "xray", "mr", "qata", "lung-ct"),
                        help="segment a bundled sample slice instead of IMAGE (reflits: LiTS CT slice with four tumours)")
    parser.add_argument("--text", required=True, help='the referring expression, e.g. "the largest lesion"')
    parser.add_argument("--checkpoint", default="auto",
                        help="auto (default): the shipped model for the image (a radiograph: qata; a chest CT: "
                             "lung-ct; other CT: liver), said on stderr and in --json; or a shipped model's name "
                             "(default = liver, qata, lung-ct) or a .safetensors checkpoint")
    parser.add_argument("--image-kind", choices=("auto", "xray", "ct"), default="auto",
                        help="what a header-less image (PNG, JPEG, TIFF, .npy) is, for --checkpoint auto: xray "
                             "gets the X-ray model (a DICOM's own Modality wins)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda or cuda:N")
    parser.add_argument("-o", "--output", required=True,
                        help="where to write the mask (binary PNG, 0/255; with --follow: .nii.gz, .nii or .npy)")
    parser.add_argument("--frame", type=int, help="slice of a multi-frame DICOM or 3-D .npy")
    parser.add_argument("--units", choices=("auto", "hu", "raw"), default="auto",
                        help="for .npy: are values Hounsfield units? (auto: guess from the values)")
    parser.add_argument("--text-encoder", help="local text encoder directory, if the checkpoint's is elsewhere")
    parser.add_argument("--match", type=int, default=0, metavar="N",
                        help="0 (default): the words' answer; N: the N-th next match, the lesion the words rank "
                             "next (the widget's Next match; models with a lesion selector)")
    parser.add_argument("--compiled", choices=("auto", "build", "off"), default="auto",
                        help="on the CPU: auto (default) runs the model's compiled graphs without loading PyTorch "
                             "when they are cached (a quick start), else PyTorch; build: build them first (once per "
                             "model: ~50 s on a 2-core CPU); off: PyTorch only")
    parser.add_argument("--json", action="store_true", help="print pixels, seconds and the model's identity")
    volume = parser.add_argument_group("volumes (follow the lesion through the slices)")
    volume.add_argument("--follow", action="store_true",
                        help="segment slice --slice, then follow that lesion through the neighbouring slices")
    volume.add_argument("--slice", type=int, help="the slice (0-based, along the volume's first axis) to start on")
    volume.add_argument("--engine", choices=("lesions", "words", "box"), default=None,
                        help="what proposes each neighbouring slice's lesion: the lesions LSMS finds (default), "
                             "LSMS with the expression, or LiteMedSAM with the previous slice's box "
                             "(docs/volumes.md)")
    volume.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli("lsms-segment", lambda: _segment(args))


def _segment(args: argparse.Namespace) -> int:
    if args.follow:
        from .follow import follow_volume

        if args.match:
            raise ValueError("--match goes with one slice; --follow follows the words' answer on --slice")
        return follow_volume(args)
    if args.slice is not None or args.engine is not None:
        raise ValueError("--slice and --engine go with --follow (a volume); for one slice of a stack use --frame")
    if args.match < 0:
        raise ValueError(f"--match {args.match}: give 0 for the words' answer or N >= 1 for the N-th next match")
    from PIL import Image

    from ..expressions import clean_expression
    from ..image_io import read_slice

    start = time.perf_counter()
    clean_expression(args.text)  # fail before loading anything
    output = Path(args.output)
    if not output.parent.exists():
        raise FileNotFoundError(f"output folder {output.parent} does not exist")
    if output.is_dir():
        raise IsADirectoryError(f"-o {output} is a folder: name the mask file, e.g. -o {output / 'mask.png'}")
    units = {"auto": None, "hu": True, "raw": False}[args.units]
    if (args.image is None) == (args.sample is None):
        raise ValueError("give either an IMAGE path or --sample NAME")
    for what, source in (("the input image", args.image), ("the checkpoint", args.checkpoint)):
        if source and _same_file(output, Path(source)):
            raise ValueError(f"-o {output} is {what} itself: the mask would replace it; name another file, e.g. "
                             f"-o {output.parent / (Path(source).stem + '.mask.png')}")
    if args.sample:
        from ..samples import load_sample

        image = load_sample(args.sample)
    else:
        image = read_slice(args.image, frame=args.frame, hounsfield=units)
    choice = _choose_model(args, image)
    segmenter = _open_segmenter(args)
    loaded = time.perf_counter()
    outside = _domain_warning(image, args.checkpoint)
    if outside:
        print(f"lsms-segment: warning: {outside}", file=sys.stderr)
    result = segmenter.segment(image, args.text)
    mask = _chosen_match(result, args.match)
    Image.fromarray(mask.astype(np.uint8) * 255).save(output, format="PNG")
    report = {"match": args.match, "matches": None if result.matches is None else len(result.matches.choices()),
              "output": str(output), "pixels": int(mask.sum()), "height": image.shape[0], "width": image.shape[1],
              "seconds": round(time.perf_counter() - start, 4), "load_seconds": round(loaded - start, 4),
              "segment_seconds": round(result.seconds, 4), "model": segmenter.describe(), "text": result.text,
              "hounsfield": image.hounsfield, "notes": result.notes, "outside_domain": outside,
              "model_choice": None if choice is None else {"name": choice.name, "reason": choice.reason}}
    say_choice(choice)
    if args.json:
        print(json.dumps(report, sort_keys=True))
    else:
        print(f"{report['pixels']} pixels -> {output} ({report['seconds']:.2f} s, {result.device})")
    return 0


def _choose_model(args: argparse.Namespace, image):
    """With ``--checkpoint auto``: the shipped model for ``image`` (a Slice), put into ``args.checkpoint``; else None
    (the model named is used as given). ``say_choice`` tells the user once the run succeeded (an error stays one
    line)."""
    from ..models import resolve_auto

    args.checkpoint, choice = resolve_auto(args.checkpoint, image.pixels, image.hounsfield, image.modality,
                                           image.body_part, args.image_kind)
    return choice


def say_choice(choice) -> None:
    """The automatic choice of model, and why, on stderr (nothing when the user named the model)."""
    if choice is not None:
        print(f"lsms-segment: model: {choice.describe()} (--checkpoint NAME or PATH to choose another)",
              file=sys.stderr)


def _open_segmenter(args: argparse.Namespace):
    """A ``QuickSegmenter`` (no PyTorch: lsms_core.quick) when ``--compiled auto`` finds this model's graphs
    cached and the run is on the CPU, else a ``Segmenter``; ``--compiled build`` builds the graphs first."""
    from ..graphs import compiled_off
    from ..quick import QuickSegmenter, cuda_may_be_present

    on_cpu = args.device == "cpu" or (args.device == "auto" and not cuda_may_be_present())
    if args.compiled == "auto" and on_cpu and not compiled_off():
        quick = QuickSegmenter.open(args.checkpoint, args.text_encoder)
        if quick is not None:
            return quick
    from ..inference import Segmenter

    segmenter = Segmenter(args.checkpoint, device=args.device, text_encoder_path=args.text_encoder,
                          compiled="auto" if args.compiled == "auto" else args.compiled)
    if args.compiled == "build" and segmenter.device.type == "cpu":
        from ..compiled import available
        from ..quick_build import write_quick_start

        if not available(build=True):
            print("lsms-segment: warning: cannot build compiled graphs here (onnxruntime, onnx or onnxscript is not "
                  "installed: pip install -e .); running PyTorch", file=sys.stderr)
            return segmenter
        print("lsms-segment: building this model's compiled graphs (once per model)...", file=sys.stderr)
        try:
            write_quick_start(segmenter)
        except ValueError as error:  # a model the PyTorch-free path cannot run: this run still segments
            print(f"lsms-segment: warning: {error}", file=sys.stderr)
    return segmenter


def _chosen_match(result, match: int) -> np.ndarray:
    """The (H,W) mask ``--match`` asks for: the answer (0), or the match-th next match."""
    if match == 0:
        return result.mask
    if result.matches is None:
        raise ValueError(f"--match {match}: this model has no lesion selector, so it has only its answer (--match 0)")
    count = len(result.matches.choices())
    if match >= count:
        raise ValueError(f"--match {match}: the words have {count - 1} next matches on this slice (--match 0 to "
                         f"{count - 1})")
    return result.matches.mask(match)


def _domain_warning(image, checkpoint: str) -> str | None:
    """The widget's warning when the Slice ``image`` lies outside the model's domain (lsms_core.domain),
    else None: the DICOM header's Modality and BodyPartExamined first, intensity statistics where it is
    silent."""
    from ..checkpoint import CheckpointError
    from ..domain import ImageFacts, domain_warning, model_domain, outside_domain

    try:
        domain = model_domain(checkpoint)
    except (CheckpointError, OSError):  # the model loaded; a header it cannot describe only hides a hint
        return None
    reasons = outside_domain(ImageFacts(image.pixels, image.hounsfield, image.modality, image.body_part), domain)
    return domain_warning(reasons, domain) if reasons else None


def _same_file(a: Path, b: Path) -> bool:
    """True when ``a`` and ``b`` are one file (the same path spelt otherwise, a symbolic or a hard link)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # either is missing: writing ``a`` cannot destroy ``b``
        return False


if __name__ == "__main__":
    sys.exit(main())
