#!/usr/bin/env bash
# Sex from the image on the RSNA thumbnails, CPU only (2 cores, about 25-30 minutes when
# the machine is otherwise idle): ImageNet EfficientNet-Lite0 fine-tuned at 96 px for two
# epochs, 10% of the images held out first and evaluated at the end.
#
#   bash recipes/sex_cpu.sh [DATA_DIR] [RUN_DIR]
set -euo pipefail
DATA=${1:-../shared/data/rsna-thumbs-100}
RUN=${2:-models/sex-lite0-96}
python -m h2a train --task sex --data "$DATA" --out "$RUN" --arch efficientnet_lite0 --image-size 96 \
  --epochs 2 --batch-size 32 --lr 1e-3 --optimizer adamw --scheduler cosine \
  --holdout-fraction 0.1 --val-fraction 0.1 --workers 1 --seed 0
python -m h2a evaluate --model "$RUN" --split holdout --json
