import json
import math

import pytest
import torch
from conftest import ROOT

import patch
import utils
from data import DataConfig, MatrixSampler
from model import load_checkpoint
from modeling_bert import act_name, patch_hooks, patch_z_hooks
from utils import UserError


def _cfg(tiny_run, tmp_path, *overrides):
    run, _ = tiny_run
    return utils.load_config(
        patch.Config,
        ROOT / "configs" / "patch.yaml",
        [
            f"ckpt.run={run}",
            "ckpt.step=20",
            f"out_dir={tmp_path / 'out'}",
            "device=cpu",
            "data.num_samples=8",
            "data.batch_size=8",
            *overrides,
        ],
    )


def test_smoke(tiny_run, tmp_path):
    # The tiny model only copies, so the gap to restore is at observed entries.
    summary = patch.main(_cfg(tiny_run, tmp_path, "patch.sweep_entries=observed"))
    out = tmp_path / "out"
    for name in (
        "config.yaml",
        "summary.json",
        "patch.md",
        "patch_heads.png",
        "patch_positions.png",
    ):
        assert (out / name).is_file(), name
    saved = json.loads((out / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    assert saved["patched"]["layers"] == [1]  # layers: [-1] is the last of 2
    for run in saved["runs"].values():
        assert all(math.isfinite(run[k]) for k in ("x_observed", "x_hidden", "neg_x_hidden"))
    assert len(saved["head_sweep"]) == 2 and len(saved["head_sweep"][0]) == 4
    assert len(saved["position_sweep"][0]) == 16
    assert all(math.isfinite(v) for row in saved["position_sweep"] for v in row)


def test_what_patching_restores(tiny_run):
    """Patching nothing gives the corrupted output; the embedding output plus z everywhere, or a
    layer's whole input, gives the clean one; z at every layer alone does not (the residual
    stream still carries the corrupted tokens)."""
    run, _ = tiny_run
    model, _ = load_checkpoint(run / "step_000020.pt")
    pairs = [MatrixSampler(DataConfig(m=4, n=4, rank=1), seed=3).sample_with_corrupted(8)]
    layers = list(range(model.config.num_hidden_layers))
    interventions = {
        "nothing": lambda cache: [],
        "embed_and_z": lambda cache: (
            patch_hooks(cache, [act_name("embed")]) + patch_z_hooks(cache, layers)
        ),
        "input_of_layer_1": lambda cache: patch_hooks(cache, [act_name("resid_pre", 1)]),
        "z_everywhere": lambda cache: patch_z_hooks(cache, layers),
    }
    preds = patch.patched_predictions(model, pairs, interventions)
    assert torch.equal(preds["nothing"], preds["corrupted"])
    torch.testing.assert_close(preds["embed_and_z"], preds["clean"], atol=1e-6, rtol=0)
    torch.testing.assert_close(preds["input_of_layer_1"], preds["clean"], atol=1e-6, rtol=0)
    assert (preds["z_everywhere"] - preds["clean"]).abs().max() > 1e-3
    rows = patch.score(preds, pairs[0][0].target, pairs[0][0].observed)
    assert rows["nothing"]["restored_observed"] == pytest.approx(0.0, abs=1e-6)
    assert rows["embed_and_z"]["restored_observed"] == pytest.approx(1.0, abs=1e-4)


def test_restored_fraction():
    assert patch.restored_fraction(1.0, 0.25, 0.0) == pytest.approx(0.75)
    assert patch.restored_fraction(1.0, 1.5, 0.5) == pytest.approx(-1.0)
    assert patch.restored_fraction(1.0, 0.5, 0.999) is None  # no gap to restore


def test_bad_indices_are_named(tiny_run, tmp_path):
    with pytest.raises(UserError, match="patch.heads.*4"):
        patch.main(_cfg(tiny_run, tmp_path, "patch.heads=[4]"))
    with pytest.raises(UserError, match="patch.layers.*-3"):
        patch.main(_cfg(tiny_run, tmp_path, "patch.layers=[-3]"))
