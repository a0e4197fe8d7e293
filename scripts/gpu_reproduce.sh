#!/usr/bin/env bash
# The whole paper pipeline (reproduce.sh) on a time-limited GPU machine, over two calls:
#
#   bash scripts/gpu_reproduce.sh start   OUT_DIR WAIT_S   # call 1: start everything, wait, pack
#   bash scripts/gpu_reproduce.sh collect OUT_DIR WAIT_S   # call 2: wait for the rest, pack
#
# `start` runs, in a background session that outlives the call (the machine stays warm between
# the two calls): reproduce.sh --train-only, then reproduce.sh --skip-train and, if SWEEP_S > 0,
# beside the analyses (which leave the GPU mostly idle) the sweep of CPU-demo variants that
# docs/results/tiny_sweep_h100 reports (scripts/sweep.py, SWEEP_S seconds).
# Each call waits up to WAIT_S seconds for that work to end, then packs everything but the
# checkpoints into OUT_DIR/results.tgz (logs, exit codes, figures, summaries, results.json).
# REPRO_ARGS (default: none, the paper's setting) and SWEEP_S (default 0: no sweep) change what
# runs; `REPRO_ARGS="--tiny --steps 60"` is a quick check on a CPU.
set -uo pipefail
mode=${1:?usage: bash scripts/gpu_reproduce.sh start|collect OUT_DIR WAIT_S}
out=${2:?usage: bash scripts/gpu_reproduce.sh start|collect OUT_DIR WAIT_S}
wait_s=${3:?usage: bash scripts/gpu_reproduce.sh start|collect OUT_DIR WAIT_S}
work=${WORK:-/tmp/gpu_reproduce}
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1

if [[ $mode == start ]]; then
  if [[ -e $work && ! -f $work/device.txt ]]; then  # only a previous run's folder is replaced
    echo "error: WORK folder '$work' exists and is not an earlier gpu_reproduce.sh run; not replacing it" >&2
    exit 2
  fi
  rm -rf "$work" && mkdir -p "$work"
  {
    date -u +%Y-%m-%dT%H:%M:%SZ
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
    python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
    git log -1 --format='commit %H %s' 2>/dev/null || true
  } > "$work/device.txt"
  S="train.steps=100000"
  setsid nohup bash -c "
    t0=\$(date +%s)
    bash reproduce.sh --out '$work/rep' --train-only ${REPRO_ARGS:-} > '$work/train.log' 2>&1
    echo \$? > '$work/train.rc'; echo \"train: \$(( \$(date +%s) - t0 )) s\" >> '$work/device.txt'
    if (( ${SWEEP_S:-0} > 0 )); then
      python3 -m scripts.sweep --out '$work/sweep' --time-limit ${SWEEP_S:-0} --parallel 6 \
        --seeds 0 --variant 'base: $S' --variant 'd96: $S model.hidden_size=96 model.intermediate_size=384' \
        --variant 'L3: $S model.num_hidden_layers=3' > '$work/sweep.log' 2>&1 &
      python3 -m scripts.sweep --out '$work/sweep2' --time-limit ${SWEEP_S:-0} --parallel 3 \
        --seeds 2 --variant 'base: $S' --variant 'b256: $S train.batch_size=256' > '$work/sweep2.log' 2>&1 &
      python3 -m scripts.sweep --out '$work/sweep3' --time-limit ${SWEEP_S:-0} --parallel 1 \
        --seeds 1 --variant 'b256: $S train.batch_size=256' > '$work/sweep3.log' 2>&1 &
    fi
    t1=\$(date +%s)
    if [[ \$(cat '$work/train.rc') == 0 ]]; then
      bash reproduce.sh --out '$work/rep' --skip-train ${REPRO_ARGS:-} > '$work/analyse.log' 2>&1
      echo \$? > '$work/analyse.rc'; echo \"analyses: \$(( \$(date +%s) - t1 )) s\" >> '$work/device.txt'
    fi
    wait
    echo done > '$work/all.done'
  " > "$work/background.log" 2>&1 < /dev/null &
elif [[ $mode != collect ]]; then
  echo "error: unknown mode '$mode' (start or collect)" >&2
  exit 2
fi

for (( i = 0; i < wait_s; i++ )); do
  [[ -f $work/all.done ]] && break
  [[ -f $work/train.rc && $(cat "$work/train.rc") != 0 ]] && break
  sleep 1
done
mkdir -p "$out"
tar czf "$out/results.tgz" --exclude='*.pt' -C "$work" .
ls "$work" "$work/rep" 2>/dev/null
for f in "$work"/*.log; do echo "== $f"; tr '\r' '\n' < "$f" | tail -n 4; done
[[ -f $work/all.done ]] && echo "all done" || echo "still running"
