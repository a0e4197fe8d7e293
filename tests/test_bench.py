"""bench.py runs on a CPU with a tiny config and reports both loops (not a speed test)."""

import json
import math

import pytest
from conftest import ROOT, TINY

import bench
import utils


def test_bench_runs_and_reports(tmp_path):
    pytest.importorskip("transformers")
    overrides = [o for o in TINY if not o.startswith("train.steps")]
    cfg = utils.load_config(
        bench.BenchConfig,
        ROOT / "configs/bench.yaml",
        [
            "bench.train_config=configs/train_tiny.yaml",
            f"bench.overrides={json.dumps(overrides)}",
            f"bench.variants={json.dumps(['train.precision=bf16'])}",
            "bench.warmup_steps=1",
            "bench.steps=3",
            f"bench.out_dir={tmp_path}",
        ],
    )
    summary = bench.main(cfg)
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["runs"].keys() == summary["runs"].keys()
    assert len(summary["runs"]) == 3  # ours, one variant, the baseline
    for run in summary["runs"].values():
        assert run["steps_per_s"] > 0 and math.isfinite(run["tflops"])
    assert summary["speedup"] > 0 and summary["tflop_per_step"] > 0
