#!/usr/bin/env bash
# The committed real-data results (results/real/): RM-Bench chat and the DSP promptable table
# with SmolLM2-135M-Instruct, in process (vLLM, float32). Resumable: run it again after an
# interruption and only the missing responses are scored (per-response caches in .cache/eval/).
# Usage: scripts/real_eval.sh MODEL_DIR [DATA_DIR] [DSP_QUERIES]
set -euo pipefail
MODEL=${1:?model directory}
DATA=${2:-../shared/data}
QUERIES=${3:-60}
OUT=results/real
ENGINE=(--model "$MODEL" --served-model-name smollm2-135m-instruct --dtype float32 --kv-cache-gb 1
        --max-model-len 2048 --aggregation all --gamma 0.95 --no-progress)
mkdir -p "$OUT" .cache/eval
python -m service.cli eval "$DATA/rm-bench-chat.jsonl" -o "$OUT" --name rm-bench-chat \
    --cache .cache/eval/rm-bench-chat.scores.jsonl "${ENGINE[@]}"
python -m service.evaluation.promptable "$DATA/dsp-test.json" -o "$OUT" --name dsp-promptable \
    --queries "$QUERIES" --seed 0 --cache .cache/eval/dsp-promptable.scores.jsonl "${ENGINE[@]}"
