#!/usr/bin/env bash
# GPU profile: both tools on CUDA at a realistic size, the same report under bench/results/gpu:
# a 16k-feature SAE on a GPT-2-small-sized model (random llama2.c weights, see bench/inputs.py)
# over 8192 x 128 = 1,048,576 tokens, one pair (a lent device's time is short).
# Needs .venv and bench/.venv-saedashboard as `make setup` and `make bench` build them; on a
# device machine without package registries their wheels have to travel with the tree.
# Sharded variant: bench/gpu.sh --sharded [N] also runs ours with the pass as N (default 4) Ray
# shards sharing the GPU (fractional GPUs per task) and reports the overhead against the local path
# on the same card, and whether the feature files are byte-identical.
# Usage: bench/gpu.sh [--dry-run] [--sharded [N]] [extra run.py flags]
set -euo pipefail
cd "$(dirname "$0")/.."
extra=()
if [[ "${1:-}" == "--sharded" ]]; then
  shift
  shards=4
  if [[ "${1:-}" =~ ^[0-9]+$ ]]; then shards="$1"; shift; fi
  extra=(--ray "$shards")
fi
exec .venv/bin/python bench/run.py --device cuda --model gpt2-small-random --d-sae 16384 \
  --rows 8192 --context 128 --pairs 1 --threads "$(nproc)" --no-scaling \
  --results bench/results/gpu "${extra[@]}" "$@"
