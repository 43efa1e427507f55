#!/usr/bin/env bash
# GPU profile: ours on CUDA at a realistic width (16k features, ~1M tokens), same report.
# stories260K is the only model reachable offline; a GPT-2-small-sized random model is not wired
# in yet (see the bench report). Usage: bench/gpu.sh [--dry-run] [extra run.py flags]
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python bench/run.py --device cuda --d-sae 16384 --rows 8192 --context 128 \
  --threads 16 --results bench/results/gpu "$@"
