#!/usr/bin/env bash
# What bfloat16 costs in ranking (issue 21): RM-Bench chat (all 129 prompts, every aggregation) and the
# DSP promptable table, scored exactly as scripts/real_eval.sh scores the committed float32 tables
# (results/real/), only with --dtype bfloat16; written to results/real/bf16/.
# Usage: scripts/bf16_eval.sh MODEL_DIR [DATA_DIR] [DSP_QUERIES]
set -euo pipefail
MODEL=${1:?model directory}
DATA=${2:-../shared/data}
QUERIES=${3:-60}
DTYPE=${DTYPE:-bfloat16}
OUT=results/real/bf16
export VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS=${VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS:-3600}
ENGINE=(--model "$MODEL" --served-model-name smollm2-135m-instruct --dtype "$DTYPE" --kv-cache-gb 1
        --max-model-len 2048 --max-num-batched-tokens 1024 --aggregation all --gamma 0.95 --no-progress)
mkdir -p "$OUT" .cache/eval
python -m endorm_server.cli eval "$DATA/rm-bench-chat.jsonl" -o "$OUT" --name rm-bench-chat \
    --cache .cache/eval/rm-bench-chat-$DTYPE.scores.jsonl --batch-size 6 --concurrency 8 "${ENGINE[@]}"
python -m endorm_server.evaluation.promptable "$DATA/dsp-test.json" -o "$OUT" --name dsp-promptable \
    --queries "$QUERIES" --seed 0 --cache .cache/eval/dsp-promptable-$DTYPE.scores.jsonl --batch-size 5 --concurrency 10 \
    "${ENGINE[@]}"
