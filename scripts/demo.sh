#!/usr/bin/env bash
# Fresh machine -> a tiny BERT pretrained on the embedded corpus (CPU, minutes) and exported.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
OUT=${1:-runs/tiny}
python -m pipeline train configs/mlm/tiny.yaml --output-dir "$OUT"
python -m pipeline export "$OUT"
python - "$OUT/export" <<'PY'
import sys
from transformers import pipeline

fill = pipeline("fill-mask", model=sys.argv[1])
for text in ("and god said , let there be [MASK] .", "in the beginning god created the [MASK] and the earth ."):
    best = ", ".join(f"{p['token_str']} ({p['score']:.2f})" for p in fill(text)[:3])
    print(f"{text}\n  -> {best}")
PY
echo "run folder: $OUT (metrics.jsonl, plots/, checkpoints/, export/)"
