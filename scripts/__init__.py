"""The tools around the scripts (sweeps, comparisons, exports, cluster jobs); run each from the
repo root as `python3 -m scripts.NAME` (README, "Tools")."""
