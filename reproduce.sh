#!/usr/bin/env bash
# Reproduce the paper: train configs/train.yaml with the checkpoints the analyses need, then run
# every analysis script on them; all figures and numbers land in one folder, with results.json
# gathering every summary.json.
#
#   bash reproduce.sh                        # the paper's setting, on a GPU
#   bash reproduce.sh --tiny                 # the same pipeline on the CPU demo config
#   bash reproduce.sh --tiny --steps 60      # shorter still (what the tests run)
#
# Options:
#   --out DIR           output folder (default results/reproduce, or results/reproduce_tiny)
#   --steps N           training steps (default: the config's); checkpoints at N/10, N/4, N/2, N
#                       in --tiny mode, at the paper's steps otherwise
#   --with-train-embed  also train each component alone from the final checkpoint (long)
#   --with-gpt          also train the GPT variant (src/configs/gpt.yaml; gpt_cpu.yaml with --tiny)
#   --train-only        stop after training; --skip-train: analyse the run already in OUT/train
#                       (to split the work over two calls of a time-limited machine)
#   --set KEY=VALUE     an override of the training config (repeatable), e.g.
#                       --set model.hidden_size=32; the analyses read sizes from the checkpoints
set -euo pipefail
cd "$(dirname "$0")"

tiny=0 out="" steps="" train_embed=0 gpt=0 train=1 analyse=1 sets=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --tiny) tiny=1 ;;
    --out) out=$2; shift ;;
    --steps) steps=$2; shift ;;
    --with-train-embed) train_embed=1 ;;
    --with-gpt) gpt=1 ;;
    --train-only) analyse=0 ;;
    --skip-train) train=0 ;;
    --set) sets+=("--$2"); shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "error: unknown option '$1' (see bash reproduce.sh --help)" >&2; exit 2 ;;
  esac
  shift
done

if (( tiny )); then
  config=configs/train_tiny.yaml
  out=${out:-results/reproduce_tiny}
  steps=${steps:-$(python3 -c "import yaml; print(yaml.safe_load(open('$config'))['train']['steps'])")}
  ckpts=$(python3 -c "n=$steps; print(','.join(map(str, sorted({max(1, n // 10), max(1, n // 4), max(1, n // 2), n}))))")
  # The tiny model has 4 layers × 4 heads on 5×5 matrices: heads and lines that exist there,
  # and fewer samples so the whole pipeline runs in minutes on a CPU.
  small=(--data.num_samples=128 --data.batch_size=128)
  extra_ablation=(--ablation.heads=[[1,0],[1,1]])
  extra_att=()  # the structured masks' lines follow the matrix size by default
  extra_probe=(--probe.num_test=128)
else
  config=configs/train.yaml
  out=${out:-results/reproduce}
  steps=${steps:-50000}
  ckpts=1000,4000,10000,14000,16000,20000,$steps
  small=() extra_ablation=() extra_att=() extra_probe=()
fi
IFS=, read -r -a all <<< "$ckpts"
first=${all[0]} last=${all[-1]}
pre=${all[1]:-$first}  # a checkpoint on the plateau (the paper's 4000)
run=$out/train
mkdir -p "$out"
start=$(date +%s)
stage() { echo; echo "== $1 ($(( $(date +%s) - start )) s)"; }

if (( train )); then
  stage "train ($config, $steps steps, checkpoints at $ckpts)"
  python3 train.py --config "$config" --train.out_dir="$run" --train.steps="$steps" \
    --train.save_steps="[$ckpts]" "${sets[@]}"
fi
(( analyse )) || exit 0

ck=(--ckpt.run="$run")
stage "copy check (Table 1)"
python3 copy_check.py --config configs/copy_check.yaml "${ck[@]}" --ckpt.steps="[$ckpts]" \
  --out_dir="$out/copy_check" "${small[@]}"
stage "BERT vs nuclear norm (Fig. 3)"
python3 compare_nuc_bert.py --config configs/compare_nuc_bert.yaml "${ck[@]}" \
  --out_dir="$out/compare_nuc_bert" "${small[@]}"
stage "out of distribution (Fig. 19)"
python3 ood.py --config configs/ood.yaml "${ck[@]}" --out_dir="$out/ood" "${small[@]}"
stage "attention maps (Fig. 4)"
python3 att_maps.py --config configs/att_maps.yaml "${ck[@]}" --ckpt.steps="[$ckpts]" \
  --out_dir="$out/att_maps" "${small[@]}"
python3 att_maps.py --config configs/att_maps.yaml "${ck[@]}" --ckpt.steps="[$last]" \
  --att_maps.mask=row --out_dir="$out/att_maps_row" "${small[@]}" "${extra_att[@]}"
stage "activation patching"
python3 patch.py --config configs/patch.yaml "${ck[@]}" --ckpt.step="$last" \
  --out_dir="$out/patch" "${small[@]}"
stage "head ablation"
python3 uniform_ablation.py --config configs/uniform_ablation.yaml "${ck[@]}" \
  --ckpt.step="$last" --out_dir="$out/uniform_ablation" "${small[@]}" "${extra_ablation[@]}"
stage "linear probes (Fig. 6)"
python3 probe.py --config configs/probe.yaml "${ck[@]}" --ckpt.step="$last" \
  --out_dir="$out/probe" "${small[@]}" "${extra_probe[@]}"
stage "switching components"
python3 switch_models.py --config configs/switch_models.yaml "${ck[@]}" \
  --ckpt.pre_step="$pre" --ckpt.post_step="$last" --out_dir="$out/switch_models" "${small[@]}"
stage "embeddings (Fig. 7)"
for exp in token_norm token_pca pos_norm pos_tsne permute token_progress pos_progress; do
  python3 embed.py --config configs/embed.yaml "${ck[@]}" --ckpt.step="$last" \
    --ckpt.steps="[$ckpts]" --exp_type=$exp --out_dir="$out/embed" "${small[@]}"
done
if (( train_embed )); then
  stage "component-wise training (Fig. 8)"
  python3 train_embed.py --config configs/train_embed.yaml "${ck[@]}" --ckpt.step="$last" \
    --out_dir="$out/train_embed" $( (( tiny )) && echo "--train.steps=$steps --train.log_every=10" )
fi
if (( gpt )); then
  stage "GPT variant"
  gcfg=src/configs/gpt.yaml; (( tiny )) && gcfg=src/configs/gpt_cpu.yaml
  python3 -m src.gpt.train --config "$gcfg" --train.out_dir="$out/gpt"
fi

stage "collect"
python3 -m scripts.collect_results "$out"
echo "done in $(( $(date +%s) - start )) s; figures and numbers in $out"
