#!/usr/bin/env bash
# Round 1 of the CPU-miniature search (issue #29): eight settings x seeds 200, 201 (never run
# before), one torch thread per run, two runs side by side, from a frozen worktree of commit
# CODE (the code that trained them: 7e635af, with the prune rule of 56f19af). Each run is capped at the steps its setting makes in 10
# minutes at 2 threads on the idle machine (../speed_settings, one bench call, minus ~10 s of
# start-up); a run whose L_mask is not 2x below its plateau by 60 % of its cap is stopped
# (--prune-at 0.6; scripts/sweep.py pruned()).
# Common to all (configs/train_tiny.yaml plus): 5x5 rank 1, 4 layers, 4 heads, FFN 4x width,
# init 0.10, fp32, Adam 1e-3, log_every 50. wsd = constant lr, then linear to 0 over the last 30 %.
set -euo pipefail
CODE=${CODE:?a worktree of the commit below}
OUT=${OUT:-$PWD/docs/results/cpu_miniature/search/round1}  # run from the repo root
C="model.hidden_size=64 model.intermediate_size=256 model.initializer_range=0.1 train.precision=fp32"
W="train.lr_schedule=wsd train.decay_fraction=0.3"
# train.resume=true: the sweep was restarted once (its first rung pruned partial drops too, see
# README.md); runs continue from their checkpoints, runs without one start at step 0.
C="$C train.resume=true"
cd "$CODE"
python3 scripts/sweep.py --out "$OUT" --parallel 2 --threads 1 \
  --time-limit 4000 --prune-at 0.6 --seeds 200 201 \
  --variant "d64b64_wsd: $C $W train.batch_size=64 train.steps=14500" \
  --variant "d64b32_wsd: $C $W train.batch_size=32 train.steps=22400" \
  --variant "d64b32_cos: $C train.lr_schedule=cosine train.batch_size=32 train.steps=22400" \
  --variant "d64b32_lr2e-3_wsd: $C $W train.lr=2e-3 train.warmup_steps=500 train.batch_size=32 train.steps=22400" \
  --variant "d96b32_wsd: $C $W model.hidden_size=96 model.intermediate_size=384 model.initializer_range=0.08 train.batch_size=32 train.steps=14100" \
  --variant "6x6b32_wsd: $C $W data.m=6 data.n=6 train.batch_size=32 train.steps=16750" \
  --variant "L3b64_wsd: $C $W model.num_hidden_layers=3 train.batch_size=64 train.steps=16500"
