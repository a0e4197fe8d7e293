#!/usr/bin/env bash
# The probe question of docs/RESULTS.md (paper Fig. 6) on a GPU, one call per model: train, then
# probe the last checkpoint for the row and the column (least squares as the authors, and ridge),
# measure how its positional embeddings group (pos_tsne: raw-space silhouettes), find its row and
# column heads (att_maps) and ablate them beside random heads (uniform_ablation by role).
#
#   bash scripts/gpu_probe.sh OUT_DIR paper TIME_S   # configs/train.yaml: 4 layers × 8 heads
#   bash scripts/gpu_probe.sh OUT_DIR deep TIME_S    # the authors' probe.yaml: 12 layers × 12 heads
#   bash scripts/gpu_probe.sh --check                # only check that every command's config loads
#
# Training stops at 50,000 steps or after TIME_S seconds, whichever comes first (Ctrl-C's path:
# train.py saves a checkpoint and its summary), leaving time for the probes (about a minute on a
# GPU). On one H100 the paper model ran 134 steps/s (50k steps in 6.4 min); the 12-layer one costs
# about 3× as much per step, so one 540 s call reaches roughly 20,000 of its steps: past the drop
# only if it drops that early (RESULTS.md says how far it got). Writes OUT_DIR/probe_<model>.tgz
# (logs, metrics, summaries, figures; no checkpoints). BASE (default configs/train.yaml) changes
# the training config: `BASE=configs/train_tiny.yaml bash scripts/gpu_probe.sh /tmp/p paper 60`
# is a quick check on a CPU.
set -uo pipefail
usage="usage: bash scripts/gpu_probe.sh OUT_DIR paper|deep TIME_S | --check"
out=${1:?$usage}
base=${BASE:-configs/train.yaml}
work=${WORK:-/tmp/gpu_probe}
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1

model_args() {
  case $1 in
    paper) echo "" ;;
    deep) echo "--model.num_hidden_layers=12 --model.num_attention_heads=12" ;;
    *) echo "error: the model is 'paper' or 'deep', not '$1'" >&2; return 2 ;;
  esac
}

if [[ $out == --check ]]; then
  for which in paper deep; do
    python3 train.py --config "$base" $(model_args $which) --print-config > /dev/null || exit 1
    echo "ok: $which"
  done
  python3 probe.py --config configs/probe.yaml "--probe.targets=[element,row,column]" \
    --probe.ridge=1.0 --print-config > /dev/null || exit 1
  python3 embed.py --config configs/embed.yaml --exp_type=pos_tsne --print-config > /dev/null || exit 1
  python3 att_maps.py --config configs/att_maps.yaml --ckpt.steps=[] --print-config > /dev/null || exit 1
  python3 uniform_ablation.py --config configs/uniform_ablation.yaml --ablation.heads=row \
    --print-config > /dev/null || exit 1
  echo "ok: probe, embed, att_maps, uniform_ablation"
  exit 0
fi
which=${2:?$usage}
time_s=${3:?$usage}
args=$(model_args "$which") || exit 2
dir=$work/$which
if [[ -e $dir && ! -f $dir/device.txt ]]; then  # only a previous run's folder is replaced
  echo "error: WORK folder '$dir' exists and is not an earlier gpu_probe.sh run; not replacing it" >&2
  exit 2
fi
rm -rf "$dir" && mkdir -p "$dir" "$out"
{
  date -u +%Y-%m-%dT%H:%M:%SZ
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
  python3 -c "import torch; print('torch', torch.__version__)"
  git log -1 --format='commit %H %s' 2>/dev/null || true
} > "$dir/device.txt"
start=$(date +%s)
timeout -s INT "$time_s" python3 train.py --config "$base" $args --train.out_dir="$dir/train" \
  --train.save_every=0 --train.save_steps=[] > "$dir/train.log" 2>&1
echo "train: exit $?, $(( $(date +%s) - start )) s" >> "$dir/device.txt"
for ridge in 0.0 1.0; do
  python3 probe.py --config configs/probe.yaml --ckpt.run="$dir/train" --ckpt.step=null \
    "--probe.targets=[element,row,column]" --probe.ridge=$ridge \
    --out_dir="$dir/probe_ridge$ridge" > "$dir/probe_ridge$ridge.log" 2>&1
  echo "probe ridge $ridge: exit $?" >> "$dir/device.txt"
done
python3 embed.py --config configs/embed.yaml --exp_type=pos_tsne --ckpt.run="$dir/train" \
  --ckpt.step=null --out_dir="$dir/embed" > "$dir/embed.log" 2>&1
echo "embed pos_tsne: exit $?" >> "$dir/device.txt"
python3 att_maps.py --config configs/att_maps.yaml --ckpt.run="$dir/train" --ckpt.steps=[] \
  --out_dir="$dir/att_maps" > "$dir/att_maps.log" 2>&1
echo "att_maps: exit $?" >> "$dir/device.txt"
for role in row column; do  # this model's own heads, beside random sets of as many others
  python3 uniform_ablation.py --config configs/uniform_ablation.yaml --ckpt.run="$dir/train" \
    --ckpt.step=null --ablation.heads=$role --ablation.sweep=false \
    --out_dir="$dir/ablation_$role" > "$dir/ablation_$role.log" 2>&1
  echo "uniform_ablation $role heads: exit $?" >> "$dir/device.txt"
done
echo "all done after $(( $(date +%s) - start )) s" >> "$dir/device.txt"
tar czf "$out/probe_$which.tgz" --exclude='*.pt' -C "$work" "$which"
