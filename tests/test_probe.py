import json
import math

import pytest
import torch
from conftest import ROOT

import probe
import utils
from data import DataConfig, make_batch


def _cfg(tiny_run, out):
    run, _ = tiny_run
    return utils.load_config(
        probe.Config,
        ROOT / "configs" / "probe.yaml",
        [
            f"ckpt.run={run}",
            "ckpt.step=20",
            f"out_dir={out}",
            "device=cpu",
            "data.num_samples=24",
            "data.batch_size=16",
            "probe.num_test=8",
        ],
    )


def test_smoke(tiny_run, tmp_path):
    summary = probe.main(_cfg(tiny_run, tmp_path / "out"))
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
        keys += ["test_r2_mates"] if kind in ("row", "column") else []
        assert all(math.isfinite(r[k]) for r in rows for k in keys)
    assert saved["better_axis"] in ("row", "column", "neither")


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
    column = probe.probe_target("column", batch)
    assert column.shape == (1, 6, 2)
    assert column[0, 1].tolist() == [0, -4]  # position (0, 1): its column, hidden as 0
    assert column[0, 3].tolist() == [1, -2]  # position (1, 0)
    assert column[0, 5].tolist() == [3, 0]
    # the mates leave out the entry's own coordinate: (0, 1) is index 1 of its row, 0 of its column
    assert probe.mates_mask("row", batch)[1].tolist() == [True, False, True]
    assert probe.mates_mask("column", batch)[1].tolist() == [False, True]
    u = probe.probe_target("singular_vector", batch)
    expected = torch.tensor([-1.0, 2.0]) / math.sqrt(5)  # largest-magnitude entry positive
    for k in range(6):
        torch.testing.assert_close(u[0, k], expected)


def test_mates_r2_leaves_out_what_copying_explains():
    """Catches an R² over the row that counts the entry's own value: features that hold only the
    entry's own value (what a copying model has) explain that coordinate perfectly and nothing
    about its row-mates, so the mates R² is ≈ 0 while the plain R² is clearly positive."""
    g = torch.Generator().manual_seed(0)
    m = n = 4
    values = torch.rand(400, m, n, generator=g) * 2 - 1
    observed = torch.ones(400, m, n, dtype=torch.bool)
    batch = make_batch(values, observed, DataConfig(m=m, n=n, rank=1))
    y = probe.probe_target("row", batch).flatten(0, 1)
    own = batch.target.flatten().unsqueeze(1)  # the entry's own value as the feature
    onehot = torch.nn.functional.one_hot(torch.arange(m * n) % n, n).repeat(400, 1).double()
    x = torch.cat([own * onehot, onehot], dim=1)  # own value, placed at its own coordinate
    half = len(x) // 2
    w = probe.fit_probe(x[:half], y[:half])
    mates = probe.mates_mask("row", batch)[half:]
    scores = probe.probe_scores(w, x[half:], y[half:], y[:half].double().mean(0), True, mates)
    assert scores["r2"] > 0.2 and abs(scores["r2_mates"]) < 0.05


def test_ridge_tames_an_ill_conditioned_fit():
    """Catches probe.ridge being ignored: with nearly collinear features and noisy targets the
    plain least squares extrapolates on new points, the ridge fit does not."""
    g = torch.Generator().manual_seed(1)
    base = torch.randn(40, 1, generator=g)
    x = torch.cat([base, base + 1e-6 * torch.randn(40, 1, generator=g)], dim=1)
    y = base + 0.1 * torch.randn(40, 1, generator=g)
    x_new = torch.tensor([[1.0, -1.0]])  # off the line the train points lie on
    plain = probe.with_bias(x_new.double(), True) @ probe.fit_probe(x, y)
    ridge = probe.with_bias(x_new.double(), True) @ probe.fit_probe(x, y, ridge=1.0)
    assert plain.abs().item() > 10 * ridge.abs().item()


def test_figure_leaves_the_embeddings_out_and_redraws_from_summary(tiny_run, tmp_path):
    """Catches the embedding layer's huge test MSE flattening the plot: the curves cover layers
    1..L only, and the figure is drawn from summary.json alone."""
    probe.main(_cfg(tiny_run, tmp_path))
    fig = probe.plot_probes(json.loads((tmp_path / "summary.json").read_text()))
    for ax in fig.axes:
        for line in ax.get_lines():
            assert list(line.get_xdata()) == [1, 2]
    utils.close_figure(fig)


def test_the_axis_verdict_needs_a_margin():
    """Catches an axis named from noise (−0.039 vs −0.035 on an untrained model)."""

    def results(row, col):
        rows = [{"layer": i, "test_r2_mates": v} for i, v in enumerate([0.0, 0.0, row])]
        cols = [{"layer": i, "test_r2_mates": v} for i, v in enumerate([0.0, 0.0, col])]
        return {"row": rows, "column": cols}

    assert probe.line_verdict(results(-0.039, -0.035))["better_axis"] == "neither"
    assert probe.line_verdict(results(0.30, 0.10))["better_axis"] == "row"
    assert probe.line_verdict(results(0.10, 0.30))["better_axis"] == "column"
    assert probe.line_verdict(results(0.30, 0.27))["better_axis"] == "neither"
