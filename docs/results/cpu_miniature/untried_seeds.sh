#!/usr/bin/env bash
# The CPU miniature (configs/train_mini.yaml, as committed) on ten seeds nobody had run: 110-119.
# One torch thread per run, two runs side by side, no pruning: every seed runs its 16,500 steps.
# Run from a frozen worktree of the commit that holds the config (CODE), so edits made meanwhile
# do not reach the runs. Steps are what count: wall time at 2 threads idle is derived from the
# idle speed (28.0 steps/s, speed_settings), not from these side-by-side runs.
set -euo pipefail
CODE=${CODE:?a worktree of commit 3ac8328}
OUT=${OUT:-$PWD/docs/results/cpu_miniature/untried_seeds}  # run from the repo root
cd "$CODE"
python3 -m scripts.sweep --base configs/train_mini.yaml --out "$OUT" \
  --parallel 2 --threads 1 --time-limit 4000 --seeds 110 111 112 113 114 115 116 117 118 119 \
  --variant "mini:"
