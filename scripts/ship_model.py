"""Ship a trained checkpoint as one of the package's named models (lsms_core/models.py): float16 weights, the
shipped name, and the domain the automatic choice and the out-of-domain warning read.

    .venv/bin/python scripts/ship_model.py /work/runs/qata-128/best.safetensors qata \
        --modalities CR DX --regions chest lungs --terms CHEST THORAX LUNG

The weights go to lsms_core/weights/<file of that model>; the model card is written by hand from the run's
figures (lsms_core/weights/MODEL_CARD.md).
"""

from __future__ import annotations

import argparse
import hashlib

from lsms_core.checkpoint import load_model, save_checkpoint
from lsms_core.domain import domain_of_checkpoint
from lsms_core.models import SHIPPED, shipped_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("name", choices=sorted(SHIPPED))
    parser.add_argument("--modalities", nargs="+", required=True, help="DICOM Modality values of the domain")
    parser.add_argument("--regions", nargs="+", required=True, help="body regions, for the card and the warning")
    parser.add_argument("--terms", nargs="+", required=True, help="BodyPartExamined words inside the domain")
    parser.add_argument("--model-name", help="the name stored in the file (default: lsms-<name>)")
    args = parser.parse_args(argv)
    model, checkpoint = load_model(args.checkpoint)
    trained = domain_of_checkpoint(checkpoint.config, checkpoint.extra).to_record()
    domain = {**trained, "modalities": [m.upper() for m in args.modalities], "body_regions": args.regions,
              "body_part_terms": [t.upper() for t in args.terms]}
    extra = {**checkpoint.extra, "name": args.model_name or f"lsms-{args.name}", "domain": domain,
             "shipped_from": {"file": checkpoint.path.name, "sha256": checkpoint.sha256}}
    target = shipped_path(args.name)
    save_checkpoint(target, model, checkpoint.config, extra=extra, half=True)
    print(f"{target}: {target.stat().st_size / 1e6:.1f} MB, sha256 {hashlib.sha256(target.read_bytes()).hexdigest()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
