#!/usr/bin/env bash
# Reproduces the shipped default model (lsms_core/weights/lsms-reflits.safetensors) and its test figures.
#   bash scripts/train_default_model.sh [RUN_DIR]      (CPU: about 30 minutes on 2 cores; see docs/training.md)
set -euo pipefail
cd "$(dirname "$0")/.."
run=${1:-runs/default-model}
data=data/RefLiTS
bin=.venv/bin
[ -f "$data/dataset.json" ] || $bin/lsms-data build-lits "$data"
$bin/lsms-data validate "$data" >/dev/null
# Resumes where a killed run stopped; starts fresh otherwise.
if [ -f "$run/train_state.safetensors" ]; then resume=--resume; else resume=; fi
$bin/lsms-train "$data" -o "$run" $resume --preset lsms --image-size 256 --epochs 15 --batch-size 8 \
    --lr 1e-3 --weight-decay 0.05 --augment --seed 0 --model-name lsms-reflits --half-checkpoints \
    --save-every-steps 50 --no-progress
$bin/lsms-eval "$data" --checkpoint "$run/best.safetensors" --split test --json > "$run/test.json"
$bin/lsms-eval "$data" --checkpoint "$run/best.safetensors" --split test --text-mode neutral --json > "$run/test-neutral.json"
mkdir -p lsms_core/weights
cp "$run/best.safetensors" lsms_core/weights/lsms-reflits.safetensors
.venv/bin/python scripts/model_card.py "$run" >/dev/null
echo "default model: $(python3 -c "import json;d=json.load(open('$run/test.json'));n=json.load(open('$run/test-neutral.json'));print(f\"test Dice {d['dice']:.4f} mIoU {d['miou']:.4f}; neutral Dice {n['dice']:.4f} mIoU {n['miou']:.4f}\")")"
