#!/usr/bin/env bash
# The committed real-data results (results/real/): RM-Bench chat and the DSP promptable table
# with SmolLM2-135M-Instruct, in process (vLLM, float32), every aggregation from one pass.
# Resumable: run it again after an interruption and only the missing responses are scored
# (per-response caches in .cache/eval/). The DSP table was made on a shared 2-core machine
# with the two runs at once, each as its own process pinned to one core
# (VLLM_CPU_OMP_THREADS_BIND=0 for RM-Bench, =1 for DSP); the complete RM-Bench run on a quiet
# machine with the engine on both cores (VLLM_CPU_OMP_THREADS_BIND=0-1, the default now).
# Usage: scripts/real_eval.sh MODEL_DIR [DATA_DIR] [DSP_QUERIES]
set -euo pipefail
MODEL=${1:?model directory}
DATA=${2:-../shared/data}
QUERIES=${3:-60}
OUT=results/real
# Small engine steps: an 8192-token step on an overloaded CPU ran past vLLM's 300 s
# execute_model timeout and killed the engine; the timeout is raised for the same reason.
export VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS=${VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS:-3600}
ENGINE=(--model "$MODEL" --served-model-name smollm2-135m-instruct --dtype float32 --kv-cache-gb 1
        --max-model-len 2048 --max-num-batched-tokens 1024 --aggregation all --gamma 0.95 --no-progress)
mkdir -p "$OUT" .cache/eval
python -m endorm_server.cli eval "$DATA/rm-bench-chat.jsonl" -o "$OUT" --name rm-bench-chat \
    --cache .cache/eval/rm-bench-chat.scores.jsonl --batch-size 6 --concurrency 8 "${ENGINE[@]}"
python -m endorm_server.evaluation.promptable "$DATA/dsp-test.json" -o "$OUT" --name dsp-promptable \
    --queries "$QUERIES" --seed 0 --cache .cache/eval/dsp-promptable.scores.jsonl --batch-size 5 --concurrency 10 \
    "${ENGINE[@]}"
