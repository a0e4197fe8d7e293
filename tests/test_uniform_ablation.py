import json
import math

import pytest
import torch
from conftest import ROOT

import uniform_ablation
import utils
from data import DataConfig, MatrixSampler
from model import evaluate, load_checkpoint
from modeling_bert import ablate_head_hooks
from utils import UserError


def _cfg(tiny_run, tmp_path, *overrides):
    run, _ = tiny_run
    return utils.load_config(
        uniform_ablation.Config,
        ROOT / "configs" / "uniform_ablation.yaml",
        [
            f"ckpt.run={run}",
            "ckpt.step=20",
            f"out_dir={tmp_path / 'out'}",
            "device=cpu",
            "data.num_samples=12",
            "data.batch_size=12",
            "ablation.heads=[[1, 0], [0, 3]]",
            *overrides,
        ],
    )


def test_smoke(tiny_run, tmp_path):
    summary = uniform_ablation.main(_cfg(tiny_run, tmp_path, "ablation.method=zero"))
    out = tmp_path / "out"
    for name in ("config.yaml", "summary.json", "ablation.md", "ablation_sweep.png"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    for key in ("no_ablation", "ablated"):
        assert all(math.isfinite(saved[key][k]) for k in uniform_ablation.LOSSES)
    assert saved["ablated"] != saved["no_ablation"]
    sweep = saved["sweep"]["loss_mask"]
    assert len(sweep) == 2 and len(sweep[0]) == 4
    assert all(math.isfinite(v) for row in sweep for v in row)


def test_ablating_nothing_changes_nothing(tiny_run, tmp_path):
    summary = uniform_ablation.main(
        _cfg(tiny_run, tmp_path, "ablation.heads=[]", "ablation.sweep=false")
    )
    assert summary["ablated"] == summary["no_ablation"]


def test_mean_over_a_batch_of_one_is_no_ablation(tiny_run):
    """`mean` replaces a head's pattern by its batch mean: over one matrix, that is itself."""
    run, _ = tiny_run
    model, _ = load_checkpoint(run / "step_000020.pt")
    sampler = MatrixSampler(DataConfig(m=4, n=4, rank=1), seed=0)
    batches = [sampler.sample(1) for _ in range(4)]
    heads = [(0, 1), (1, 2)]
    base = evaluate(model, batches)
    mean = evaluate(model, batches, ablate_head_hooks(heads, "mean"))
    zero = evaluate(model, batches, ablate_head_hooks(heads, "zero"))
    assert mean == pytest.approx(base, rel=1e-5)
    assert zero != pytest.approx(base, rel=1e-5)
    with torch.no_grad():
        assert model(batches[0].input_ids).shape == (1, 16)


def test_head_out_of_range_is_named(tiny_run, tmp_path):
    with pytest.raises(UserError, match="ablation.heads.*head 4"):
        uniform_ablation.main(_cfg(tiny_run, tmp_path, "ablation.heads=[[0, 4]]"))
