#!/usr/bin/env bash
# The GPU check of the training-speed issue (one H100, no network needed):
#   bench  bench.py on configs/train.yaml: our loop (as configured, plus the variants listed in
#          configs/bench.yaml) against the authors'-style loop, in one process;
#   train  the paper's full 50,000-step run of configs/train.yaml, with the compile mode the bench
#          found faster (or the one given as the third argument).
# Usage: bash scripts/gpu_check.sh OUT_DIR [all|bench|train] [COMPILE_MODE]
# Writes OUT_DIR/{device.txt, bench.log, bench_summary.json (with a profile of each loop),
# bench.png, train.log, train/...}; the final
# checkpoint is written too (about 340 MB with the optimizer state). It overwrites and deletes
# nothing it did not make in this call: if a stage's outputs are already there it stops before
# writing anything (the train stage only appends its line to an earlier bench's device.txt).
set -uo pipefail
out=${1:?usage: bash scripts/gpu_check.sh OUT_DIR [all|bench|train] [COMPILE_MODE]}
stage=${2:-all}
made=()
[[ $stage == all || $stage == bench ]] && made+=(device.txt bench.log bench_summary.json bench.png)
[[ $stage == all || $stage == train ]] && made+=(train.log train)
for name in "${made[@]}"; do
  if [[ -e $out/$name ]]; then
    echo "error: $out/$name already exists; not overwriting it (choose another OUT_DIR)" >&2
    exit 2
  fi
done
mkdir -p "$out"
out=$(cd "$out" && pwd)  # absolute: the commands below run in the repo root
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."

if [[ $stage == all || $stage == bench ]]; then
  {
    date -u +%Y-%m-%dT%H:%M:%SZ
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
  } > "$out/device.txt" 2>&1
  bench_dir=$(mktemp -d "$out/bench.XXXXXX")  # a folder of this call's own, removed below
  python3 bench.py --config configs/bench.yaml --bench.profile=true --bench.out_dir="$bench_dir" > "$out/bench.log" 2>&1
  if [[ -f $bench_dir/summary.json ]]; then
    mv "$bench_dir/summary.json" "$out/bench_summary.json" && mv "$bench_dir/bench.png" "$out/bench.png" \
      && rm -r "$bench_dir"
  else
    echo "bench.py wrote no summary (see $out/bench.log); $bench_dir is kept" >&2
  fi
fi

if [[ $stage == all || $stage == train ]]; then
  mode=${3:-}
  if [[ -z $mode ]]; then
    mode=$(python3 -c "
import json, sys
runs = json.load(open(sys.argv[1]))['runs']
ours = next(v['steps_per_s'] for k, v in runs.items() if k.startswith('ours ('))
ro = [v['steps_per_s'] for k, v in runs.items() if 'reduce-overhead' in k]
print('reduce-overhead' if ro and ro[0] > ours else 'default')" "$out/bench_summary.json")
  fi
  echo "train: compile_mode=$mode" >> "$out/device.txt"
  start=$(date +%s)
  python3 train.py --config configs/train.yaml --train.out_dir="$out/train" \
    --train.save_steps=[] --train.save_every=0 --train.compile_mode="$mode" 2>&1 \
    | tr '\r' '\n' | grep -v 'it/s' > "$out/train.log"
  echo "train.py wall time (s, process start to end): $(( $(date +%s) - start ))" >> "$out/device.txt"
fi
