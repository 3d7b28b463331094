#!/usr/bin/env bash
# Reproduces the shipped default model (lsms_core/weights/lsms-reflits.safetensors) and its test figures.
#   bash scripts/train_default_model.sh [RUN_DIR]      (CPU, 2 cores: about 2 hours; see docs/training.md)
# Three stages:
#   1. stage1/  the paper's LSMS learns to find tumours on RefLiTS (the first default model's recipe;
#               resumed if interrupted, skipped once finished);
#   2. finder/  stage 1 fine-tuned on "all lesions" of RefLiTS + synthetic slices: the lesion finder
#               (resumed or skipped likewise);
#   3. RUN_DIR  the lesion selector learns which lesion each expression names (LSMS frozen) on RefLiTS,
#               data/synth and data/synth-sel (synthetic slices the finder never trained on): three
#               selectors side by side, each candidate also described by its cluster of fragments; its
#               last epoch is shipped (docs/training.md: the validation block is too small to pick epochs).
set -euo pipefail
cd "$(dirname "$0")/.."
run=${1:-runs/default-model}
data=data/RefLiTS
synth=data/synth
selector_synth=data/synth-sel
bin=.venv/bin
[ -f "$data/dataset.json" ] || $bin/lsms-data build-lits "$data"
[ -f "$synth/dataset.json" ] || $bin/lsms-data build-synth "$synth"
[ -f "$selector_synth/dataset.json" ] || $bin/lsms-data build-synth "$selector_synth" --train 4500 --val 0 --test 0 --seed 7
$bin/lsms-data validate "$data" >/dev/null
$bin/lsms-data validate "$synth" >/dev/null

stage() {  # stage DIR ARGS...: train into DIR unless it finished; resume it if it was interrupted
    local dir=$1
    shift
    if grep -q '"event": "end"' "$dir/log.jsonl" 2>/dev/null; then return; fi
    if [ -f "$dir/train_state.safetensors" ]; then resume=--resume; else resume=--overwrite; fi
    $bin/lsms-train "$@" -o "$dir" $resume --save-every-steps 50 --no-progress
}
stage "$run/stage1" "$data" --preset lsms --image-size 256 --epochs 15 --batch-size 8 --lr 1e-3 \
    --weight-decay 0.05 --augment --seed 0
stage "$run/finder" "$data" --mix "$synth" --expression-kinds count --init-checkpoint "$run/stage1/best.safetensors" \
    --preset lsms --image-size 256 --epochs 3 --batch-size 8 --lr 3e-4 --weight-decay 0.05 --augment --seed 0
$bin/lsms-train-selector "$data" "$synth" "$selector_synth" --checkpoint "$run/finder/best.safetensors" -o "$run" --overwrite \
    --epochs 30 --clusters --members 3 --seed 0 --model-name lsms-reflits --half-checkpoints --no-progress

for set in "$data:test" "$synth:synth-test"; do
    dataset=${set%%:*} name=${set##*:}
    $bin/lsms-eval "$dataset" --checkpoint "$run/last.safetensors" --split test --json > "$run/$name.json"
    $bin/lsms-eval "$dataset" --checkpoint "$run/last.safetensors" --split test --text-mode neutral --json \
        > "$run/$name-neutral.json"
done
mkdir -p lsms_core/weights
cp "$run/last.safetensors" lsms_core/weights/lsms-reflits.safetensors
.venv/bin/python scripts/model_card.py "$run" >/dev/null
echo "default model: $(python3 -c "import json;d=json.load(open('$run/test.json'));n=json.load(open('$run/test-neutral.json'));print(f\"RefLiTS test Dice {d['dice']:.4f} hit {d['hit_rate']:.3f} leak {d['leak']:.3f}; neutral Dice {n['dice']:.4f} hit {n['hit_rate']:.3f}\")")"
