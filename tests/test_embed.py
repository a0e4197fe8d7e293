import json
import math
import runpy

import numpy as np
import pytest
import torch
from conftest import ROOT

import data
import embed
import utils
from model import evaluate, load_checkpoint
from utils import UserError

FILES = {
    "token_norm": ["token_norm.png", "token_norm.pdf", "token_norm.csv"],
    "token_pca": ["token_pca.png", "token_pca.pdf"],
    "pos_norm": ["pos_norm.png", "pos_norm.pdf", "pos_norm.csv"],
    "pos_tsne": ["pos_tsne_column.png", "pos_tsne_column.pdf", "pos_tsne_row.png"],
    "token_progress": ["token_progress.png", "token_progress.pdf"],
    "pos_progress": ["pos_progress_column.png", "pos_progress_row.pdf"],
    "permute": ["permute.png"],
}


def embed_config(out_dir, run, *overrides):
    return utils.load_config(
        embed.EmbedConfig,
        ROOT / "configs" / "embed.yaml",
        [
            f"ckpt.run={run}",
            "ckpt.steps=[10, 20]",
            "device=cpu",
            f"out_dir={out_dir}",
            "data.num_samples=48",
            "data.batch_size=32",
            "embed.num_permutations=2",
            *overrides,
        ],
    )


def _numbers(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _numbers(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _numbers(v)
    elif not isinstance(obj, str):
        yield obj


@pytest.mark.parametrize("exp_type", embed.EXP_TYPES)
def test_each_exp_type_writes_finite_outputs(tiny_run, tmp_path, exp_type):
    run, _ = tiny_run
    summary = embed.main(embed_config(tmp_path, run, f"exp_type={exp_type}"))
    out = tmp_path / exp_type
    for name in ["config.yaml", "summary.json", "table.md", *FILES[exp_type]]:
        assert (out / name).is_file(), name
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    numbers = list(_numbers(summary))
    assert numbers and all(x is not None and math.isfinite(x) for x in numbers), summary
    if exp_type.endswith("progress"):
        assert [r["step"] for r in summary["steps"]] == [10, 20]


def test_value_tokens_are_the_tokenizers():
    values, ids = embed.value_tokens(data.DataConfig(), -1.5, 1.5)
    assert len(values) == 301 and ids[150] == 1001 and values[150] == 0.0
    back, observed = data.detokenize(torch.tensor(ids).view(1, -1), 1, len(ids))
    assert observed.all() and torch.allclose(back.view(-1).double(), torch.tensor(values))
    assert ids[values.tolist().index(0.44)] == 1045 and ids[values.tolist().index(-0.24)] == 977


def test_norm_symmetry_on_constructed_curves():
    values = np.arange(-150, 151) / 100
    sym = embed.norm_symmetry(values, 1 + values**2)
    assert sym["num_pairs"] == 150 and sym["norm_symmetry_corr"] == pytest.approx(1.0)
    assert sym["norm_symmetry_rel_diff"] == pytest.approx(0.0)
    skew = embed.norm_symmetry(values, 2 + values)
    assert skew["norm_symmetry_corr"] == pytest.approx(-1.0)
    assert skew["norm_symmetry_rel_diff"] > 0.3


def test_pcs_separate_magnitude_and_sign_when_the_embeddings_do():
    rng = np.random.default_rng(0)
    values = np.arange(-150, 151) / 100
    a, b = np.eye(16)[0], np.eye(16)[1]
    emb = 3 * np.abs(values)[:, None] * a + np.sign(values)[:, None] * b
    emb += 0.01 * rng.normal(size=emb.shape)
    sep = embed.pc_separation(embed.fit_pca(emb).transform(emb), values)
    assert max(sep["pc1_abs_corr_magnitude"], sep["pc2_abs_corr_magnitude"]) > 0.95
    assert max(sep["pc1_abs_corr_sign"], sep["pc2_abs_corr_sign"]) > 0.95


def test_silhouette_tells_columns_from_rows():
    rng = np.random.default_rng(0)
    m, n = 5, 5
    rows, cols = embed.grid_labels(m, n)
    assert (rows[7], cols[7]) == (1, 2)
    pos = np.eye(8)[cols] * 5 + 0.5 * rng.normal(size=(m * n, 8))
    coords, used = embed.tsne_2d(pos, 30.0, 0)
    assert coords.shape == (25, 2) and used == 24
    scores = embed.cluster_scores(pos, coords, m, n)
    assert scores["silhouette_column"] > 0.5 > scores["silhouette_row"]
    assert scores["silhouette_column_tsne"] > scores["silhouette_row_tsne"]
    assert scores["groups_by"] == "column"
    by_row = embed.cluster_scores(
        np.eye(8)[rows] * 5 + 0.5 * rng.normal(size=(25, 8)), coords, m, n
    )
    assert by_row["groups_by"] == "row"


def test_grouping_axis_needs_a_clear_margin():
    """Catches naming an axis from noise: two near-equal or negative silhouettes name neither."""
    assert utils.better_axis(0.21, 0.13, embed.AXIS_MARGIN, floor=0.0) == "row"
    assert utils.better_axis(0.13, 0.21, embed.AXIS_MARGIN, floor=0.0) == "column"
    assert utils.better_axis(0.15, 0.13, embed.AXIS_MARGIN, floor=0.0) == "neither"
    assert utils.better_axis(-0.1, -0.3, embed.AXIS_MARGIN, floor=0.0) == "neither"
    assert utils.better_axis(None, 0.5, embed.AXIS_MARGIN, floor=0.0) == "neither"


def test_permutation_is_undone_and_identity_changes_nothing(tiny_run):
    run, _ = tiny_run
    model, ckpt = load_checkpoint(run / "step_000020.pt")
    cfg = data.DataConfig(**ckpt["config"]["data"])
    batches = data.MatrixSampler(cfg, seed=0).sample_many(40, 16)
    weight = model.backbone.embeddings.position_embeddings.weight
    saved = weight.detach().clone()
    before = evaluate(model, batches)
    with embed.permuted_positions(model, torch.arange(16)):
        assert evaluate(model, batches) == before
    perm = torch.arange(16).roll(1)
    with embed.permuted_positions(model, perm):
        assert torch.equal(weight[:16], saved[perm]) and torch.equal(weight[16:], saved[16:])
    assert torch.equal(weight, saved)


def test_unknown_exp_type_is_one_line_listing_the_valid_ones(tmp_path, tiny_run):
    run, _ = tiny_run
    with pytest.raises(UserError, match="must be one of") as err:
        embed_config(tmp_path, run, "exp_type=bogus")
    assert "token_pca" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UserError, match=r"unknown exp_type 'bogus' \(valid: token_norm, "):
        embed.EmbedConfig(exp_type="bogus")


def test_bad_inputs_are_clear_errors(tmp_path, tiny_run):
    run, _ = tiny_run
    with pytest.raises(UserError, match="vocabulary"):
        embed.main(embed_config(tmp_path, run, "embed.value_max=12.0"))
    with pytest.raises(UserError, match="value_min"):
        embed_config(tmp_path, run, "embed.value_min=2.0")
    with pytest.raises(UserError, match="ckpt.path names one file"):
        path = run / "step_000020.pt"
        embed.main(embed_config(tmp_path, run, "exp_type=pos_progress", f"ckpt.path={path}"))
    with pytest.raises(UserError, match="step_000015.pt not found"):
        embed.main(embed_config(tmp_path, run, "exp_type=token_progress", "ckpt.steps=[15]"))


def _grid_columns(fig):
    """Columns of the panel grid (the visible axes of a figure of panels)."""
    return fig.axes[0].get_subplotspec().get_gridspec().ncols


@pytest.mark.parametrize("exp_type", ["token_progress", "pos_progress"])
def test_progress_figures_wrap_into_rows_of_at_most_4_panels(tmp_path, exp_type):
    """Bug: the progress figures were one strip of 7 panels (4174×525 pixels), illegible at page
    width. Drawn from summary.json alone, 7 checkpoints now make 2 rows of at most 4 panels,
    each panel titled with its step, the figure titled with what it shows."""
    import matplotlib.pyplot as plt

    steps = [1000, 4000, 10000, 14000, 16000, 20000, 50000]
    rng = np.random.default_rng(0)
    if exp_type == "token_progress":
        values = (np.arange(-150, 151) / 100).tolist()
        figure = {"values": values, "value_min": -1.5, "value_max": 1.5, "num_bins": 6}
        figure["pcs_by_step"] = [rng.normal(size=(301, 2)).tolist() for _ in steps]
        summary = {"exp_type": exp_type, "final_step": 50000, "figure": figure}
    else:
        figure = {"coords_by_step": [rng.normal(size=(49, 2)).tolist() for _ in steps]}
        summary = {"exp_type": exp_type, "m": 7, "n": 7, "figure": figure}
    summary["steps"] = [{"step": s} for s in steps]
    figures = embed.EXPERIMENTS[exp_type].figures(summary)
    assert set(figures) == set(embed.EXPERIMENTS[exp_type].stems)
    for fig in figures.values():
        visible = [ax for ax in fig.axes if ax.get_visible()]
        assert _grid_columns(fig) <= 4 and len(visible) == 7
        assert [ax.get_title() for ax in visible] == [f"step {s}" for s in steps]
        assert "during training" in fig.get_suptitle()
        plt.close(fig)


def test_permute_legend_explains_every_mark(tiny_run, tmp_path):
    """Bug: the permute figure had black dots, one per permutation, that the legend did not name
    (and bars on a log axis). Every mark drawn is now in the legend."""
    import matplotlib.pyplot as plt

    run, _ = tiny_run
    summary = embed.main(embed_config(tmp_path, run, "exp_type=permute"))
    fig = embed.plot_permute(json.loads(json.dumps(summary)))
    (ax,) = fig.axes
    legend = fig.legends[0]
    assert not ax.patches  # no bars
    assert [t.get_text() for t in legend.get_texts()] == [
        "original positional embeddings",
        "one random permutation (2 in all)",
        "mean over the permutations",
    ]
    # each kind of mark has its own colour: every colour drawn has its legend entry, no other
    explained = {tuple(h.get_facecolor()[0]) for h in legend.legend_handles}
    assert {tuple(c.get_facecolor()[0]) for c in ax.collections} == explained
    assert len(explained) == 3
    assert "step 20" in ax.get_title()
    plt.close(fig)


def test_pos_tsne_draws_one_panel_per_column_from_summary_json(tiny_run, tmp_path):
    """Bug: the pos_tsne figure coloured 7 columns with overlapping points inside each cluster, so
    the colours could not be told apart. It is now small multiples, one panel per column (and per
    row), that group's positions highlighted; drawn from summary.json's `figure` alone."""
    import matplotlib.pyplot as plt

    run, _ = tiny_run
    embed.main(embed_config(tmp_path, run, "exp_type=pos_tsne"))
    saved = json.loads((tmp_path / "pos_tsne" / "summary.json").read_text())
    assert np.asarray(saved["figure"]["coords"]).shape == (16, 2)
    figures = embed.EXPERIMENTS["pos_tsne"].figures(saved)
    for kind, fig in figures.items():
        visible = [ax for ax in fig.axes if ax.get_visible()]
        assert len(visible) == 4 and _grid_columns(fig) <= 4
        for ax in visible:
            _, highlighted = ax.collections
            assert len(highlighted.get_offsets()) == 4  # one row or column of the 4×4 matrix
        kind_word = kind.split("_")[-1]
        assert [ax.get_title() for ax in visible][0] == f"{kind_word} 1 (1-based)"
        plt.close(fig)


def test_redraw_redraws_each_exp_type_or_says_what_was_not_saved(tiny_run, tmp_path):
    """Bug: embed's figures could only be redrawn from the checkpoints. scripts/redraw.py
    redraws every exp_type's figures from summary.json alone; for a summary from before the
    points were saved it names the figures it could not redraw and leaves them as they were."""
    redraw = runpy.run_path(str(ROOT / "scripts" / "redraw.py"))["redraw"]
    run, _ = tiny_run
    for exp_type in ("token_norm", "token_pca", "pos_norm", "pos_progress"):
        embed.main(embed_config(tmp_path, run, f"exp_type={exp_type}"))
        out = tmp_path / exp_type
        pngs = sorted(out.glob("*.png"))
        for png in pngs:
            png.unlink()
        script, written, notes = redraw(out)
        assert script == "embed" and notes == []
        assert sorted(p for p in written if p.suffix == ".png") == pngs
    summary = json.loads((out / "summary.json").read_text())
    del summary["figure"]
    (out / "summary.json").write_text(json.dumps(summary))
    _, written, notes = redraw(out)
    assert written == [] and len(notes) == 2 and "pos_progress_row.png" in notes[1]
