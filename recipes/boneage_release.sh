#!/usr/bin/env bash
# The shipped bone-age model (models/h2a-boneage), in two fixed stages with no time budget, so
# the same command gives the same model whatever the machine's speed that day (seeded end to
# end: split, initialisation, batches, augmentation; resumable: run it again after a kill
# and it continues at the next epoch of the stage it was in).
#   1. 18 epochs at 128 px: the CPU recipe's flags with weight EMA (0.999) and the
#      augmentation the quick recipe halved (shift 0.06, rotation 10, zoom 0.1). Validation
#      MAE 9.39 (one view); held-out 8.56 (SE 0.23). The quick recipe underfits in 10 epochs,
#      and validation had flattened by epoch 13 (9.43).
#   2. 4 epochs at 160 px warm-started from stage 1 (lr 4e-4, EMA 0.998): the thumbnails hold
#      no more detail, but the network's last feature map grows from 4x4 to 5x5 cells.
#      Validation 9.33, 9.22, 9.17, 9.12 (docs/experiments.md, 2026-12-07).
# The 53 full-resolution ids are left out of training: they fit and judge the `fullres`
# site profile. Precision: --amp off (float32 channels_last). On an AMX Xeon float32 trains
# this model 1.6x faster than bf16 autocast (oneDNN's bf16 depthwise backward is slow), and
# float32 is the same arithmetic on every CPU.
# Time on a quiet 2-core AVX512-BF16 EPYC: 42 min (140 s an epoch) + 14 min (205 s an epoch)
# + the held-out evaluation (about 8 min); 1.5-2x that on an AVX2-only CPU.
#   bash recipes/boneage_release.sh [DATA_DIR] [RUN_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/rsna-thumbs-100}
RUN=${2:-models/rsna-boneage-release}
STAGE1=${RUN}-128px
PY=${PY:-.venv/bin/python}
COMMON=(--data "$DATA" --task boneage --arch efficientnet_lite0 --pretrained --resize squash --hand-crop
        --batch-size 32 --weight-decay 1e-4 --optimizer adamw --scheduler cosine --loss l1
        --shift 0.06 --rotation 10 --zoom 0.1 --amp off --bn-momentum 0.1 --freeze 0
        --holdout-fraction 0.1 --val-fraction 0.05 --workers 0
        --exclude-ids ../shared/data/rsna-fullres --seed 0)

. recipes/lib/stages.sh

start=$(date +%s)
train_stage "$STAGE1" "${COMMON[@]}" --image-size 128 --epochs 18 --lr 2e-3 --ema 0.999
train_stage "$RUN" "${COMMON[@]}" --image-size 160 --epochs 4 --lr 4e-4 --ema 0.998 --init-from "$STAGE1"
trained=$(date +%s)
[ -f "$RUN/holdout.json" ] || \
  $PY -m h2a evaluate --model "$RUN" --split holdout --tta --tta-views 64 --json > "$RUN/holdout.json"
end=$(date +%s)
echo "training: $(( (trained - start) / 60 )) min $(( (trained - start) % 60 )) s;" \
     "held-out evaluation: $(( (end - trained) / 60 )) min $(( (end - trained) % 60 )) s"
