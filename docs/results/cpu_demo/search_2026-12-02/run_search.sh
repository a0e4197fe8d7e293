#!/usr/bin/env bash
# The #25 search: 10 settings x seeds 100-102, one thread each, two side by side, each run capped at
# the steps its setting makes in 10 minutes side by side (speed probe: SEARCH/speed).
cd . && . .venv/bin/activate && source SEARCH/variants.sh
args=(); for v in "${V[@]}"; do args+=(--variant "$v"); done
python3 -m scripts.sweep --out SEARCH/r100_101 --time-limit 1500 --stop-after-drop 3000 --seeds 100 101 "${args[@]}"
python3 -m scripts.sweep --out SEARCH/r102 --time-limit 1500 --stop-after-drop 3000 --seeds 102 "${args[@]}"
