#!/usr/bin/env bash
# The paper's claims that need training runs of their own (docs/RESULTS.md, rows marked —), side
# by side on one GPU for TIME_S seconds, then packed for the trip back:
#
#   bash scripts/gpu_claims.sh OUT_DIR TIME_S
#   bash scripts/gpu_claims.sh --check          # only check that train.py takes every variant
#
# Variants of configs/train.yaml (seed 0): factors N(0, 1) (vocabulary ±30); width 64 and 128 (FFN 4× width);
# depth 6; a 5×5 / 7×7 / 9×9 rank-1 mixture. The 4-layer, width-768 baseline they compare with is
# docs/results/h100_reproduce/train (drop 12,100 – 14,200). Runs still going at TIME_S are
# stopped; each one's drop is read from what it logged (scripts/sweep.py). Writes
# OUT_DIR/claims.tgz (every run's metrics.jsonl, config.yaml, log, sweep.md/json; no checkpoints).
# BASE (default configs/train.yaml) and VARIANTS (default: all of the above) change what runs;
# `BASE=configs/train_tiny.yaml bash scripts/gpu_claims.sh /tmp/c 20` is a quick check on a CPU.
set -uo pipefail
usage="usage: bash scripts/gpu_claims.sh OUT_DIR TIME_S | --check"
out=${1:?$usage}
base=${BASE:-configs/train.yaml}
work=${WORK:-/tmp/gpu_claims}
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1

common="train.steps=50000 train.save_every=0"
variants=(
  # ±30 vocabulary: with ±10, N(0,1) factors put an entry outside it about once in 20,000
  # (measured: 4.4e-5 per entry at rank 2), so every run stopped within its first steps
  "gaussian: $common data.distribution=gaussian data.min_vocab=-30.0 data.max_vocab=30.0"
  "d64: $common model.hidden_size=64 model.intermediate_size=256"
  "d128: $common model.hidden_size=128 model.intermediate_size=512"
  "L6: $common model.num_hidden_layers=6"
  "mixture: $common data.rank=1 data.sizes=[5,7,9]"
)
args=()
for v in "${variants[@]}"; do
  name=${v%%:*}
  [[ -z ${VARIANTS:-} || " $VARIANTS " == *" $name "* ]] && args+=(--variant "$v")
done

if [[ $out == --check ]]; then
  for v in "${variants[@]}"; do
    overrides=()
    for o in ${v#*:}; do overrides+=("--$o"); done
    python3 train.py --config "$base" "${overrides[@]}" --print-config > /dev/null || exit 1
    echo "ok: $v"
  done
  exit 0
fi
time_s=${2:?$usage}
if [[ -e $work && ! -f $work/sweep.log ]]; then  # only a previous run's folder is replaced
  echo "error: WORK folder '$work' exists and is not an earlier gpu_claims.sh run; not replacing it" >&2
  exit 2
fi
rm -rf "$work" && mkdir -p "$work" "$out"
python3 -m scripts.sweep --base "$base" --out "$work" --time-limit "$time_s" \
  --parallel $(( ${#args[@]} / 2 )) --threads 2 --seeds 0 "${args[@]}" 2>&1 | tee "$work/sweep.log"
tar czf "$out/claims.tgz" --exclude='*.pt' -C "$work" .
