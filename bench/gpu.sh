#!/usr/bin/env bash
# GPU profile: both tools on CUDA at a realistic size, the same report under bench/results/gpu:
# a 16k-feature SAE on a GPT-2-small-sized model (random llama2.c weights, see bench/inputs.py)
# over 8192 x 128 = 1,048,576 tokens. Usage: bench/gpu.sh [--dry-run] [extra run.py flags]
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python bench/run.py --device cuda --model gpt2-small-random --d-sae 16384 \
  --rows 8192 --context 128 --threads "$(nproc)" --no-scaling --results bench/results/gpu "$@"
