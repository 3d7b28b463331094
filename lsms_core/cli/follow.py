"""``lsms-segment VOLUME --slice K --text T --follow -o MASK``: the lesion T names on slice K, followed
through the volume's slices (lsms_core.follow) -> a (Z,H,W) mask in the volume's geometry."""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np

MASK_SUFFIXES = (".nii.gz", ".nii", ".npy")


def mask_format(output: Path) -> str:
    """The output format from the name: one of MASK_SUFFIXES; ValueError saying what to use otherwise."""
    name = output.name.lower()
    for suffix in MASK_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    raise ValueError(f"-o {output}: a followed lesion is a 3-D mask; name it .nii.gz (NIfTI, in the volume's "
                     f"geometry) or .npy ((Z,H,W) uint8)")


def write_volume_mask(mask: np.ndarray, volume, output: Path) -> None:
    """(Z,H,W) mask -> ``output``: NIfTI with the volume's affine, or a uint8 .npy (written atomically)."""
    from ..atomic import atomic_write_bytes

    data = np.ascontiguousarray(mask, dtype=np.uint8)
    if mask_format(output) == ".npy":
        buffer = io.BytesIO()
        np.save(buffer, data)
        atomic_write_bytes(output, buffer.getvalue())
    else:
        from ..export.nifti import write_nifti_mask

        write_nifti_mask(data, volume, output)


def follow_volume(args: argparse.Namespace) -> int:
    from ..follow import follow_lesion
    from ..follow_engines import DEFAULT_ENGINE, make_proposer
    from ..inference import Segmenter, clean_expression
    from ..models import resolve_auto
    from ..volume_io import read_volume
    from ..volume_measure import measure_volume
    from .common import progress_bar
    from .segment import say_choice

    start = time.perf_counter()
    clean_expression(args.text)
    if args.sample:
        raise ValueError("--follow needs a volume (a DICOM series folder, NIfTI/NRRD or (Z,H,W) .npy), not --sample")
    if args.image is None:
        raise ValueError("give the VOLUME to follow the lesion through")
    if args.slice is None:
        raise ValueError("--follow needs --slice K: the slice (0-based) where the expression names the lesion")
    if args.frame is not None:
        raise ValueError("--frame picks one slice of a stack; with --follow give the starting slice as --slice")
    output = Path(args.output)
    mask_format(output)
    if not output.parent.exists():
        raise FileNotFoundError(f"output folder {output.parent} does not exist")
    units = {"auto": None, "hu": True, "raw": False}[args.units]
    volume = read_volume(args.image, hounsfield=units)
    depth = len(volume.pixels)
    if not 0 <= args.slice < depth:
        raise ValueError(f"--slice {args.slice} is outside the volume's slices 0..{depth - 1}")
    seed_slice = volume.slice(args.slice)  # a volume is CT: "auto" chooses the chest or the liver model by it
    args.checkpoint, choice = resolve_auto(args.checkpoint, seed_slice.pixels, seed_slice.hounsfield, "CT",
                                           seed_slice.body_part, "ct")
    segmenter = Segmenter(args.checkpoint, device=args.device, text_encoder_path=args.text_encoder)
    seed = segmenter.segment(volume.slice(args.slice), args.text)
    if not seed.mask.any():
        raise ValueError(f"no lesion found for {seed.text!r} on slice {args.slice}: nothing to follow (try another "
                         "slice or expression)")
    engine = args.engine or DEFAULT_ENGINE
    prompt_segmenter = None
    if engine == "box":
        from ..prompt.prompt_model import PromptSegmenter

        prompt_segmenter = PromptSegmenter(device=args.device)
    propose = make_proposer(engine, volume.pixels, volume.hounsfield, segmenter, seed.text, prompt_segmenter)
    bar, update = progress_bar("follow", "slice", not args.no_progress and not args.json)
    with bar:
        result = follow_lesion(volume.pixels.shape, args.slice, seed.mask, propose, progress=update)
    write_volume_mask(result.mask, volume, output)
    measured = measure_volume(result.mask, volume.spacing_mm, volume.slice_spacing_mm, volume.pixels,
                              volume.hounsfield)
    report = {"output": str(output), "text": seed.text, "seed_slice": args.slice, "engine": engine,
              "slices": result.slices, "stops": {k: {"slice": v.slice, "reason": v.reason}
                                                 for k, v in result.stops.items()},
              "measurements": measured.to_record(), "model": segmenter.describe(),
              "seconds": round(time.perf_counter() - start, 3), "notes": volume.notes,
              "model_choice": None if choice is None else {"name": choice.name, "reason": choice.reason}}
    say_choice(choice)
    if args.json:
        print(json.dumps(report, sort_keys=True))
    else:
        print(f"{measured.summary()} -> {output} ({report['seconds']:.1f} s)")
        for name, stop in result.stops.items():
            print(f"  stopped {name} at slice {stop.slice}: {stop.reason}", file=sys.stderr)
    return 0
