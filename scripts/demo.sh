#!/usr/bin/env bash
# Fresh machine -> a tiny ModernBERT pretrained on the embedded corpus for 4 minutes of CPU (the lr
# schedule follows that budget), exported, and scored as a user of the export sees it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=${1:-runs/demo}
python -m pipeline train configs/mlm/demo.yaml --output-dir "$OUT"
# held-out loss/accuracy (one document per sequence, stock transformers) and fill-mask answers
python scripts/score_mlm.py "$OUT/export" --block 64
echo "run folder: $OUT (metrics.jsonl, plots/loss.png, checkpoints/, export/)"
echo "train on (its schedule was the 4 minutes): python -m pipeline train configs/mlm/demo.yaml train.max_time_s=900 --output-dir $OUT-long"
echo "fine-tune: python -m pipeline finetune $OUT/export configs/finetune/bible-sections.yaml --output-dir $OUT-ft"
