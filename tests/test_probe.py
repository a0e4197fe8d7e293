import json
import math

import pytest
import torch
from conftest import ROOT

import probe
import utils
from data import DataConfig, make_batch


def test_smoke(tiny_run, tmp_path):
    run, _ = tiny_run
    cfg = utils.load_config(
        probe.Config,
        ROOT / "configs" / "probe.yaml",
        [
            f"ckpt.run={run}",
            "ckpt.step=20",
            f"out_dir={tmp_path / 'out'}",
            "device=cpu",
            "data.num_samples=24",
            "data.batch_size=16",
            "probe.num_test=8",
        ],
    )
    summary = probe.main(cfg)
    out = tmp_path / "out"
    for name in ("config.yaml", "summary.json", "probe.md", "probe.png", "probe.pdf"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    assert set(saved["targets"]) == set(probe.TARGETS)
    for kind, rows in saved["targets"].items():
        assert [r["layer"] for r in rows] == [0, 1, 2]  # embeddings, then 2 layers
        keys = ["train_mse", "test_mse"] + (
            ["test_mse_observed", "test_mse_hidden"] if kind == "element" else ["test_cos"]
        )
        assert all(math.isfinite(r[k]) for r in rows for k in keys)


def test_probe_recovers_a_linear_target_from_rank_deficient_features():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 6, generator=g)
    x = x - x.mean(1, keepdim=True)  # rows sum to 0, like LayerNorm outputs: rank 5 with bias
    w = torch.randn(6, 3, generator=g)
    y = x @ w + torch.tensor([0.5, -1.0, 2.0])
    fit = probe.fit_probe(x[:200], y[:200], bias=True)
    scores = probe.probe_scores(fit, x[200:], y[200:], y[:200].double().mean(0), bias=True)
    assert scores["mse"] < 1e-10
    assert scores["r2"] == pytest.approx(1.0)
    assert scores["cos"] == pytest.approx(1.0)
    no_bias = probe.fit_probe(x[:200], y[:200], bias=False)
    assert probe.probe_scores(no_bias, x[200:], y[200:], y.double().mean(0), False)["mse"] > 0.1


def test_targets_of_a_hand_built_matrix():
    values = torch.tensor([[[1.0, 2.0, 3.0], [-2.0, -4.0, -6.0]]])  # rank 1, 2×3
    observed = torch.tensor([[[True, False, True], [True, True, False]]])
    batch = make_batch(values, observed, DataConfig(m=2, n=3, rank=1))
    element = probe.probe_target("element", batch)
    assert element[0, :, 0].tolist() == [1, 2, 3, -2, -4, -6]
    row = probe.probe_target("row", batch)
    assert row.shape == (1, 6, 3)
    assert row[0, 1].tolist() == [1, 0, 3]  # position (0, 1): its row, hidden entries as 0
    assert row[0, 5].tolist() == [-2, -4, 0]
    u = probe.probe_target("singular_vector", batch)
    expected = torch.tensor([-1.0, 2.0]) / math.sqrt(5)  # largest-magnitude entry positive
    for k in range(6):
        torch.testing.assert_close(u[0, k], expected)
