#!/usr/bin/env bash
# GPU profile: both tools on CUDA at a realistic size, the same report under bench/results/gpu:
# a 16k-feature SAE on a GPT-2-small-sized model (random llama2.c weights, see bench/inputs.py)
# over 8192 x 128 = 1,048,576 tokens, one pair (a lent device's time is short).
# Where .venv exists (make setup), both tools run from their venvs as `make bench` builds them.
# On a lent device machine there is no .venv and no registry: its python3 holds PyTorch with
# CUDA, and what else ours needs travels as wheels (run `.venv/bin/python bench/gpu_wheels.py`
# here, then `run` with carry [".whl"]); they are installed into a folder on PYTHONPATH and
# ours runs alone (SAEDashboard's pins - numpy<2, transformers<4.57, pyarrow<19 - are older
# than the device's own packages and more than one call carries).
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
python=.venv/bin/python
if [[ ! -x "$python" ]]; then
  if ! compgen -G ".whl/ours/*.whl" >/dev/null; then
    echo "bench/gpu.sh: no .venv and no wheels in .whl/ours: run bench/gpu_wheels.py where a" \
      "registry is reachable and carry .whl" >&2
    exit 2
  fi
  site="${TMPDIR:-/tmp}/mistudio-gpu-site"
  python3 -m pip install --quiet --no-index --no-deps --no-compile --upgrade --target "$site" \
    .whl/ours/*.whl
  tree=("$PWD"/protos/gen/python "$PWD"/services/{common,compute,store,export,cli,gateway})
  PYTHONPATH="$site:$(IFS=:; echo "${tree[*]}")${PYTHONPATH:+:$PYTHONPATH}"
  export PYTHONPATH
  python=python3
  extra+=(--ours-only)
fi
exec "$python" bench/run.py --device cuda --model gpt2-small-random --d-sae 16384 \
  --rows 8192 --context 128 --pairs 1 --threads "$(nproc)" --no-scaling \
  --results bench/results/gpu "${extra[@]}" "$@"
