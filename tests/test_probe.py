import json
import math

import pytest
import torch
from conftest import ROOT

import probe
from data import DataConfig, make_batch
from utils.config import load_config
from utils.geometry import better_axis
from utils.plots import close_figure


def _cfg(tiny_run, out):
    run, _ = tiny_run
    return load_config(
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
    close_figure(fig)


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


def _ridge_by_hand(x, y, alpha, bias):
    """Ridge regression in closed form, the bias (if any) not penalised: centre x and y, solve
    (XᵀX + αI) W = XᵀY, then b = ȳ − x̄ W. Returns [D (+1), k] like fit_probe."""
    x, y = x.double(), y.double()
    if bias:
        xm, ym = x.mean(0), y.mean(0)
        x, y = x - xm, y - ym
    w = torch.linalg.solve(x.T @ x + alpha * torch.eye(x.shape[1], dtype=x.dtype), x.T @ y)
    return torch.cat([w, (ym - xm @ w)[None]]) if bias else w


@pytest.mark.parametrize("bias", [True, False])
def test_ridge_with_several_targets_is_each_targets_ridge(bias):
    """Catches the ridge path's weights put together wrongly when several targets are solved at
    once (run_probes fits every target in one solve): sklearn's coef_ [k, D] read as [D, k]
    without the transpose, the intercept left off or given to the wrong target, or the penalty
    ignored. Each column of the joint fit must be that target's own closed-form ridge."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 4, generator=g)
    y = torch.cat(
        [
            x @ torch.randn(4, 3, generator=g) + torch.tensor([1.0, -2.0, 0.5]),
            torch.randn(50, 2, generator=g),
        ],
        dim=1,
    )  # 5 targets: 3 linear, 2 noise
    joint = probe.fit_probe(x, y, bias=bias, ridge=3.0)
    assert joint.shape == (4 + bias, 5)
    torch.testing.assert_close(joint, _ridge_by_hand(x, y, 3.0, bias))
    for k in range(5):
        alone = probe.fit_probe(x, y[:, k : k + 1], bias=bias, ridge=3.0)
        torch.testing.assert_close(joint[:, k : k + 1], alone)
    # the penalty shrinks: a strong ridge's weights are smaller than least squares'
    plain = probe.fit_probe(x, y, bias=bias)
    assert joint[:4].norm() < plain[:4].norm()


def _batches(count: int, seed: int, m: int = 2, n: int = 3):
    """`count` matrices of i.i.d. Unif[−1, 1] entries (full rank, so no target is a linear
    function of another), about a third of the entries hidden, in one batch."""
    g = torch.Generator().manual_seed(seed)
    values = torch.rand(count, m, n, generator=g) * 2 - 1
    observed = torch.rand(count, m, n, generator=g) > 0.3
    return [make_batch(values, observed, DataConfig(m=m, n=n, rank=min(m, n)))]


def _layers_that_know(batches):
    """Features [N·T, D] per layer, built from the targets: layer 0 holds noise, layer 1 the row
    target exactly, layer 2 the column target and the entry itself."""

    def flat(kind):
        return torch.cat([probe.probe_target(kind, b).flatten(0, 1) for b in batches])

    g = torch.Generator().manual_seed(len(flat("element")))
    noise = [torch.randn(len(flat("element")), 2, generator=g) for _ in range(3)]
    return [
        torch.cat([noise[0], noise[1]], dim=1),
        torch.cat([flat("row"), noise[1]], dim=1),
        torch.cat([flat("column"), flat("element"), noise[2]], dim=1),
    ]


@pytest.mark.parametrize("ridge", [0.0, 1e-6])
def test_each_target_is_scored_on_its_own_columns_of_the_joint_solve(monkeypatch, ridge):
    """Catches the joint solve's weights split among the targets in the wrong order or widths
    (2×3 matrices: the row target is 3 wide, the column target 2, the element 1), with least
    squares and with ridge: features that hold a target exactly must give that target test
    R² 1, mates R² 1, |cos| 1 and MSE 0 at that layer, and not at the others."""
    monkeypatch.setattr(probe, "hidden_states", lambda model, batches: _layers_that_know(batches))
    train, test = _batches(60, 0), _batches(30, 1)
    targets = ["row", "element", "column"]  # neither the order of TARGETS nor sorted
    results = probe.run_probes(train, test, None, targets, bias=True, ridge=ridge)
    assert list(results) == targets and all(len(rows) == 3 for rows in results.values())
    exact = {"row": 1, "column": 2, "element": 2}  # the layer whose features hold the target
    for kind, layer in exact.items():
        rows = results[kind]
        assert rows[layer]["test_r2"] == pytest.approx(1.0, abs=1e-6), (kind, layer)
        assert rows[layer]["test_mse"] == pytest.approx(0.0, abs=1e-6)
        for other in {0, 1, 2} - {layer}:
            assert rows[other]["test_r2"] < 0.9, (kind, other)
        if kind != "element":
            assert rows[layer]["test_r2_mates"] == pytest.approx(1.0, abs=1e-6)
            assert rows[layer]["test_cos"] == pytest.approx(1.0, abs=1e-6)
    element = results["element"][2]
    assert element["test_mse_observed"] == pytest.approx(0.0, abs=1e-6)
    assert element["test_mse_hidden"] == pytest.approx(0.0, abs=1e-6)


def _mates(row: list, column: list) -> dict:
    """probe results holding only test_r2_mates, one value per layer (0 = embeddings)."""
    return {
        kind: [{"layer": i, "test_r2_mates": v} for i, v in enumerate(values)]
        for kind, values in (("row", row), ("column", column))
    }


def test_the_verdict_reads_layer_1_and_the_last_layer_and_names_the_axis_by_the_last():
    """Catches the rise measured from the embeddings (layer 0) instead of layer 1, or to a layer
    before the last, and the axis named by the rise instead of the last layer's R²: here the
    rows rise less (0.1 against 0.45) but the last layer holds them better (0.6 against 0.45)."""
    verdict = probe.line_verdict(_mates([0.9, 0.5, 0.55, 0.6], [0.8, 0.0, 0.1, 0.45]))
    assert verdict["row"] == pytest.approx({"first_layer": 0.5, "last_layer": 0.6, "rise": 0.1})
    assert verdict["column"] == pytest.approx(
        {"first_layer": 0.0, "last_layer": 0.45, "rise": 0.45}
    )
    assert verdict["better_axis"] == "row"


def test_the_axis_rule_says_neither_below_the_floor_at_the_margin_and_on_a_tie():
    """Catches the floor dropped (a model whose best R² is 0.04 has learnt neither, however far
    below the other lies), and ≥ where the rule says 'above' (exact binary fractions, so the
    boundary cases are exact): the score must be above the floor and above the other's by more
    than the margin."""
    margin = probe.AXIS_MARGIN
    assert probe.line_verdict(_mates([0, 0, 0.04], [0, 0, -0.5]))["better_axis"] == "neither"
    assert probe.line_verdict(_mates([0, 0, -0.5], [0, 0, 0.04]))["better_axis"] == "neither"
    assert probe.line_verdict(_mates([0, 0, 0.6], [0, 0, 0.6]))["better_axis"] == "neither"
    assert probe.line_verdict(_mates([0, 0, 0.06], [0, 0, -0.5]))["better_axis"] == "row"
    assert better_axis(0.75, 0.5, 0.25, floor=0.25) == "neither"  # exactly the margin
    assert better_axis(0.25, -1.0, 0.25, floor=0.25) == "neither"  # exactly the floor
    assert better_axis(0.5, 0.75 + 2**-10, 0.25, floor=0.25) == "column"
    assert better_axis(0.9, None, margin, floor=margin) == "neither"
    assert better_axis(None, 0.9, margin, floor=margin) == "neither"


def test_an_undefined_r2_at_layer_1_gives_no_rise_and_no_axis():
    """Bug: line_verdict raised TypeError (float − None) when layer 1's mates R² was None (an
    SST of 0, or a non-finite fit that finite_or_none turned into None). The rise is None and
    the axis rule says neither; a target whose R² is undefined at every layer is reported with
    Nones instead of being left out (which dropped the axis verdict altogether)."""
    verdict = probe.line_verdict(_mates([0.0, None, 0.3, 0.6], [0.0, 0.1, 0.1, 0.1]))
    assert verdict["row"] == {"first_layer": None, "last_layer": 0.6, "rise": None}
    assert verdict["column"]["rise"] == pytest.approx(0.0)
    assert verdict["better_axis"] == "neither"
    nowhere = probe.line_verdict(_mates([0.0, 0.1, 0.6], [None, None, None]))
    assert nowhere["column"] == {"first_layer": None, "last_layer": None, "rise": None}
    assert nowhere["row"]["rise"] == pytest.approx(0.5)
    assert nowhere["better_axis"] == "neither"


def test_main_reports_an_undefined_r2_at_layer_1(tiny_run, tmp_path, monkeypatch):
    """Bug: the TypeError above stopped probe.py after the fits, with nothing written. With layer
    1's row-mates R² undefined the run finishes: summary.json holds the rise as null and the axis
    as neither, probe.md says why, and the figure is drawn."""
    real = probe.run_probes

    def layer_1_undefined(*args, **kwargs):
        results = real(*args, **kwargs)
        results["row"][1]["test_r2_mates"] = None
        return results

    monkeypatch.setattr(probe, "run_probes", layer_1_undefined)
    summary = probe.main(_cfg(tiny_run, tmp_path))
    assert summary["row"]["rise"] is None and summary["better_axis"] == "neither"
    assert json.loads((tmp_path / "summary.json").read_text())["row"]["first_layer"] is None
    assert "a mates R² is undefined (—), so neither is named" in (tmp_path / "probe.md").read_text()
    assert (tmp_path / "probe.png").is_file()


def test_the_element_mse_is_split_by_the_entrys_visibility(monkeypatch):
    """Catches the observed and hidden element MSEs swapped or taken over the wrong positions:
    features that hold the entry's value only where it is observed (value · observed, and the
    indicator) give MSE 0 at observed positions and, at hidden ones, the mean square distance
    of the test entries from the train set's mean hidden entry (the probe's constant there)."""

    def seen_only(batches):
        x = torch.cat([b.target.flatten() for b in batches])
        o = torch.cat([b.observed.flatten() for b in batches]).float()
        return [torch.stack([x * o, o], dim=1)]

    monkeypatch.setattr(probe, "hidden_states", lambda model, batches: seen_only(batches))
    train, test = _batches(60, 0), _batches(30, 1)
    (row,) = probe.run_probes(train, test, None, ["element"], bias=True)["element"]
    hidden_train = train[0].target[~train[0].observed].double()
    hidden_test = test[0].target[~test[0].observed].double()
    assert row["test_mse_observed"] == pytest.approx(0.0, abs=1e-12)
    want = (hidden_test - hidden_train.mean()).square().mean().item()
    assert row["test_mse_hidden"] == pytest.approx(want, rel=1e-9)
