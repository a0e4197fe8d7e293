import importlib
import json
import math

import numpy as np
import pytest
import torch
from conftest import ROOT

import uniform_ablation
from data import DataConfig, MatrixSampler
from measures import evaluate
from model import load_checkpoint
from modeling_bert import ablate_head_hooks
from utils.config import UserError, load_config, resolve_path


def _cfg(tiny_run, tmp_path, *overrides):
    run, _ = tiny_run
    return load_config(
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


def _colorbar_labels(fig, ax):
    """The colour bar's tick labels inside its range, as drawn."""
    fig.canvas.draw()
    lo, hi = ax.get_ylim()
    return [t.get_text() for t in ax.get_yticklabels() if lo <= t.get_position()[1] <= hi]


def test_sweep_colour_bar_ticks_tell_the_range_ends_apart():
    """Bug: on a tiny run the losses spanned 0.11440..0.11442 and every colour-bar tick read
    0.1144 (format %.4g). The figure now shows the change against no ablation, and its colour bar
    ticks are all different, the lowest below the highest."""
    import matplotlib.pyplot as plt

    base = {"loss": 0.2, "loss_obs": 0.1144, "loss_mask": 0.3}
    tiny = [[0.11440, 0.114405, 0.11441, 0.114402], [0.114415, 0.11442, 0.114401, 0.114403]]
    sweep = {"loss": [[0.2] * 4] * 2, "loss_obs": tiny, "loss_mask": [[0.31, 0.3, 0.29, 0.3]] * 2}
    summary = {"step": 20, "method": "mean", "no_ablation": base, "sweep": sweep}
    fig = uniform_ablation.plot_sweep(summary)
    heat_axes = [ax for ax in fig.axes if ax.images]
    for ax in fig.axes:
        if ax in heat_axes:
            continue
        labels = _colorbar_labels(fig, ax)
        assert len(labels) >= 3 and len(set(labels)) == len(labels), labels
    assert "step 20" in fig.get_suptitle()
    assert [t.get_text() for t in heat_axes[0].get_xticklabels()] == ["1", "2", "3", "4"]
    plt.close(fig)


def test_sweep_cell_text_contrasts_with_its_cell(tiny_run, tmp_path):
    """Bug: black numbers were written on dark viridis cells. Each number's colour now follows
    its cell's luminance: white on the dark cells, black on the light ones."""
    import matplotlib.pyplot as plt

    uniform_ablation.main(_cfg(tiny_run, tmp_path, "ablation.method=zero"))
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    fig = uniform_ablation.plot_sweep(saved)
    colors = set()
    for ax in (ax for ax in fig.axes if ax.images):
        im = ax.images[0]
        for text in ax.texts:
            h, i = (round(c) for c in text.get_position())
            r, g, b, _ = im.cmap(im.norm(im.get_array()[i, h]))
            dark = 0.2126 * r + 0.7152 * g + 0.0722 * b < 0.5
            assert text.get_color() == ("white" if dark else "black")
            colors.add(text.get_color())
    assert colors == {"white", "black"}  # zero-ablating a head of the tiny run: big and small
    plt.close(fig)


def test_redraw_rebuilds_the_sweep_from_summary_json(tiny_run, tmp_path):
    """Bug: the sweep figure could only be redrawn by rerunning the model. scripts/redraw.py
    finds the script from config.yaml and redraws ablation_sweep.png from summary.json alone."""
    redraw = importlib.import_module("scripts.redraw").redraw
    uniform_ablation.main(_cfg(tiny_run, tmp_path))
    out = tmp_path / "out"
    (out / "ablation_sweep.png").unlink()
    assert redraw(out) == ("uniform_ablation", [out / "ablation_sweep.png"], [])


def _forced_roles(monkeypatch, roles):
    """Make analysis.resolve_heads see `roles` ([layer][head]) whatever the checkpoint does."""
    import analysis as analysis_module

    real = analysis_module.attention_summary

    def fake(m, batches, mean_pattern=False):
        return {**real(m, batches, mean_pattern), "roles": roles}

    monkeypatch.setattr(analysis_module, "attention_summary", fake)


def test_heads_by_role_come_from_the_checkpoint_with_controls(tiny_run, tmp_path, monkeypatch):
    """Catches a role name that is not resolved to this model's own heads (or resolved to the
    wrong role), and controls that reuse the ablated heads."""
    _forced_roles(monkeypatch, [["other", "row", "other", "column"], ["row", "other"] * 2])
    summary = uniform_ablation.main(
        _cfg(
            tiny_run, tmp_path, "ablation.heads=row", "ablation.controls=3", "ablation.sweep=false"
        )
    )
    assert summary["heads"] == [[0, 1], [1, 0], [1, 2]]
    assert summary["heads_chosen_by"]["by_role"] == "row"
    assert len(summary["controls"]) == 3
    for control in summary["controls"]:
        assert len(control["heads"]) == 3 and not set(map(tuple, control["heads"])) & {
            (0, 1),
            (1, 0),
            (1, 2),
        }


def test_a_role_with_no_heads_is_an_error_not_a_silent_no_op(tiny_run, tmp_path, monkeypatch):
    """Catches a role this model lacks (a plateau checkpoint's row heads) reported as an
    ablation that changed nothing, and an output folder written before the check."""
    _forced_roles(monkeypatch, [["other"] * 4, ["other"] * 4])
    cfg = _cfg(tiny_run, tmp_path, "ablation.heads=column", "ablation.sweep=false")
    with pytest.raises(UserError, match="'ablation.heads' = 'column': this checkpoint has no such"):
        uniform_ablation.main(cfg)
    assert not resolve_path(cfg.out_dir).exists()


def test_an_unknown_role_is_named(tiny_run, tmp_path):
    with pytest.raises(UserError, match="'ablation.heads' = 'diagonal': not a role"):
        uniform_ablation.main(_cfg(tiny_run, tmp_path, "ablation.heads=diagonal"))


def test_control_sets_are_distinct_draws_of_as_many_other_heads():
    """Catches controls that are one draw repeated (the generator re-seeded for each set), that
    may hold a chosen head, that are one head short or one set short, or that never reach some
    heads: on 4 layers × 8 heads with 5 chosen, 60 seeded sets of 5 other heads each, all
    different, together covering all 27 others; the same seed gives the same sets."""
    chosen = [(2, 2), (3, 1), (3, 4), (3, 5), (3, 6)]  # the authors' choice, 0-based
    sets = uniform_ablation.control_sets(chosen, 4, 8, 60, seed=0)
    others = {(i, h) for i in range(4) for h in range(8)} - set(chosen)
    assert len(sets) == 60
    for heads in sets:
        assert len(heads) == len(set(heads)) == 5
        assert set(heads) <= others and heads == sorted(heads)
    assert len({tuple(s) for s in sets}) == 60
    assert set().union(*map(set, sets)) == others
    assert uniform_ablation.control_sets(chosen, 4, 8, 60, seed=0) == sets
    assert uniform_ablation.control_sets(chosen, 4, 8, 60, seed=1) != sets


def test_control_sets_when_the_others_leave_no_choice():
    """Closed-form cases: with exactly as many other heads as chosen ones the one control set is
    those others (once, not repeated: the same set counted four times was a bug); with fewer
    different sets than asked, each of them once; with fewer heads, or nothing chosen, none."""
    chosen = [(0, 0), (1, 1), (0, 2)]
    assert uniform_ablation.control_sets(chosen, 2, 3, 4, seed=5) == [[(0, 1), (1, 0), (1, 2)]]
    two = uniform_ablation.control_sets([(1, 0), (0, 3)], 2, 4, 30, seed=0)
    assert len(two) == math.comb(6, 2) == len({tuple(s) for s in two})  # all 15, each once
    three = uniform_ablation.control_sets([(1, 0), (0, 3)], 2, 4, 3, seed=0)
    assert len({tuple(s) for s in three}) == 3  # the draw that gave a set twice (seed 0)
    assert uniform_ablation.control_sets([(0, 0), (0, 1)], 1, 3, 3, seed=0) == []
    assert uniform_ablation.control_sets([], 2, 3, 3, seed=0) == []
    assert uniform_ablation.control_sets(chosen, 2, 3, 0, seed=0) == []


def record_evaluate(monkeypatch):
    """Wrap uniform_ablation.evaluate so a test sees the model and batches the script used;
    returns (the list they are appended to, the real evaluate)."""
    seen = []
    real = uniform_ablation.evaluate

    def recording(model, batches, hooks=()):
        seen.append((model, batches))
        return real(model, batches, hooks)

    monkeypatch.setattr(uniform_ablation, "evaluate", recording)
    return seen, real


def test_each_row_reports_its_own_heads_ablated(tiny_run, tmp_path, monkeypatch):
    """Catches a control row (or the main row) that reports another set's ablation, e.g. every
    control ablating the chosen heads again: each row's losses must equal evaluating the model
    on the script's own matrices with exactly that row's heads ablated."""
    seen, real = record_evaluate(monkeypatch)
    cfg = _cfg(tiny_run, tmp_path, "ablation.controls=3", "ablation.sweep=false")
    summary = uniform_ablation.main(cfg)
    model, batches = seen[0]
    rows = [("ablated", summary["heads"], summary["ablated"])]
    rows += [(f"control {i}", c["heads"], c) for i, c in enumerate(summary["controls"])]
    for name, heads, reported in rows:
        want = real(model, batches, ablate_head_hooks([tuple(h) for h in heads], "mean"))
        assert {k: reported[k] for k in want} == want, name
    assert summary["no_ablation"] == real(model, batches)
    assert all(c["loss"] != summary["ablated"]["loss"] for c in summary["controls"])


def test_sweep_cells_are_each_heads_own_ablation(tiny_run, tmp_path, monkeypatch):
    """Catches the sweep grid filled [head][layer] or from another head's run: cell (layer i,
    head h) must be the loss with head h of layer i alone ablated (the tiny model: 2 × 4)."""
    seen, real = record_evaluate(monkeypatch)
    summary = uniform_ablation.main(_cfg(tiny_run, tmp_path, "ablation.controls=0"))
    model, batches = seen[0]
    for i in range(2):
        for h in range(4):
            want = real(model, batches, ablate_head_hooks([(i, h)], "mean"))
            for k in uniform_ablation.LOSSES:
                assert summary["sweep"][k][i][h] == want[k], (k, i, h)


def test_percent_change_on_a_worked_example():
    """Catches the heatmap's numbers taken against the wrong base or with the sign flipped."""
    change = uniform_ablation.percent_change([[0.1, 0.23], [0.05, None]], 0.1)
    assert change[0].tolist() == pytest.approx([0.0, 130.0])
    assert change[1, 0] == pytest.approx(-50.0) and np.isnan(change[1, 1])
    assert np.isnan(uniform_ablation.percent_change([[0.2]], None)).all()
    assert np.isnan(uniform_ablation.percent_change([[0.2]], 0.0)).all()
