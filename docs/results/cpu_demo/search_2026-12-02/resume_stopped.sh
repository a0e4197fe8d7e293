#!/usr/bin/env bash
# Runs that sweep.py's --stop-after-drop 3000 stopped before their cap: resumed to the cap, so
# that every run is judged at the same step count (exact resume: tests/test_train.py).
cd . && . .venv/bin/activate
for r in "$@"; do
  echo "== $r"
  OMP_NUM_THREADS=1 python3 train.py --config "$r/config.yaml" --train.resume=true --train.progress=true >> "$r/log.txt" 2>&1
  echo "rc $?"
done
