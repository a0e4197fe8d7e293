#!/usr/bin/env bash
# What a user of this machine kind sees, timed on the idle machine (nothing else running), one
# command after the other, from the repo root (2026-12-03, AMD EPYC Zen 4, 2 cores; ../lscpu.txt):
#  1. the CPU demo (configs/train_tiny.yaml) in fp32 and in bf16, side by side in one bench call;
#  2. the CPU miniature (configs/train_mini.yaml, fp32) against the same loop in bf16;
#  3. the miniature itself, seed 0, end to end at torch's default 2 threads, `time`d: start-up,
#     16,500 steps, logging, checkpoints. Its folder is the claims run's base seed 0
#     (python3 -m scripts.claims skips a run whose summary.json exists), with the claims' settings.
set -euo pipefail
OUT=docs/results/cpu_miniature
python3 bench.py --config configs/bench.yaml --bench.train_config=configs/train_tiny.yaml \
  --bench.baseline=false --bench.logging=true --bench.warmup_steps=5 --bench.steps=45 --bench.rounds=3 \
  '--bench.overrides=["train.precision=fp32"]' '--bench.variants=["train.precision=bf16"]' \
  --bench.out_dir=$OUT/speed_quickstart/train_tiny
python3 bench.py --config configs/bench.yaml --bench.train_config=configs/train_mini.yaml \
  --bench.baseline=false --bench.logging=true --bench.warmup_steps=20 --bench.steps=400 --bench.rounds=5 \
  '--bench.variants=["train.precision=bf16"]' --bench.out_dir=$OUT/speed_quickstart/train_mini
time python3 train.py --config configs/train_mini.yaml --train.resume=true --train.save_every=2000 \
  --train.device=cpu --train.seed=0 --train.out_dir=docs/results/miniature/base/base_s0
