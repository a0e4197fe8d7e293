import importlib
import json
import math

import numpy as np
import pytest
import torch
from conftest import ROOT

import data
import embed
from measures import evaluate
from model import load_checkpoint
from utils import geometry
from utils.config import UserError, load_config
from utils.geometry import better_axis

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
    return load_config(
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
    values, ids = data.value_tokens(data.DataConfig(), -1.5, 1.5)
    assert len(values) == 301 and ids[150] == 1001 and values[150] == 0.0
    back, observed = data.detokenize(torch.tensor(ids).view(1, -1), 1, len(ids))
    assert observed.all() and torch.allclose(back.view(-1).double(), torch.tensor(values))
    assert ids[values.tolist().index(0.44)] == 1045 and ids[values.tolist().index(-0.24)] == 977


def test_norm_symmetry_on_constructed_curves():
    values = np.arange(-150, 151) / 100
    sym = geometry.norm_symmetry(values, 1 + values**2)
    assert sym["num_pairs"] == 150 and sym["norm_symmetry_corr"] == pytest.approx(1.0)
    assert sym["norm_symmetry_rel_diff"] == pytest.approx(0.0)
    skew = geometry.norm_symmetry(values, 2 + values)
    assert skew["norm_symmetry_corr"] == pytest.approx(-1.0)
    assert skew["norm_symmetry_rel_diff"] > 0.3


def test_pcs_separate_magnitude_and_sign_when_the_embeddings_do():
    rng = np.random.default_rng(0)
    values = np.arange(-150, 151) / 100
    a, b = np.eye(16)[0], np.eye(16)[1]
    emb = 3 * np.abs(values)[:, None] * a + np.sign(values)[:, None] * b
    emb += 0.01 * rng.normal(size=emb.shape)
    sep = geometry.pc_separation(geometry.fit_pca(emb).transform(emb), values)
    assert max(sep["pc1_abs_corr_magnitude"], sep["pc2_abs_corr_magnitude"]) > 0.95
    assert max(sep["pc1_abs_corr_sign"], sep["pc2_abs_corr_sign"]) > 0.95


def test_silhouette_tells_columns_from_rows():
    rng = np.random.default_rng(0)
    m, n = 5, 5
    rows, cols = geometry.grid_labels(m, n)
    assert (rows[7], cols[7]) == (1, 2)
    pos = np.eye(8)[cols] * 5 + 0.5 * rng.normal(size=(m * n, 8))
    coords, used = geometry.tsne_2d(pos, 30.0, 0)
    assert coords.shape == (25, 2) and used == 24
    scores = geometry.cluster_scores(pos, coords, m, n)
    assert scores["silhouette_column"] > 0.5 > scores["silhouette_row"]
    assert scores["silhouette_column_tsne"] > scores["silhouette_row_tsne"]
    assert scores["groups_by"] == "column"
    by_row = geometry.cluster_scores(
        np.eye(8)[rows] * 5 + 0.5 * rng.normal(size=(25, 8)), coords, m, n
    )
    assert by_row["groups_by"] == "row"


def test_grouping_axis_needs_a_clear_margin():
    """Catches naming an axis from noise: two near-equal or negative silhouettes name neither."""
    assert better_axis(0.21, 0.13, geometry.AXIS_MARGIN, floor=0.0) == "row"
    assert better_axis(0.13, 0.21, geometry.AXIS_MARGIN, floor=0.0) == "column"
    assert better_axis(0.15, 0.13, geometry.AXIS_MARGIN, floor=0.0) == "neither"
    assert better_axis(-0.1, -0.3, geometry.AXIS_MARGIN, floor=0.0) == "neither"
    assert better_axis(None, 0.5, geometry.AXIS_MARGIN, floor=0.0) == "neither"


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
    redraw = importlib.import_module("scripts.redraw").redraw
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


def test_pc_separation_reads_each_pc_against_each_target():
    """Catches the PCs or the targets swapped (the max over both PCs in the test above does not
    see it): PC1 = |v| and PC2 = sign v exactly, on a grid symmetric about 0 where |v| and
    sign v are uncorrelated, give 1 and 0 in the four cells."""
    values = np.arange(-150, 151) / 100
    pcs = np.stack([np.abs(values), np.sign(values)], axis=1)
    sep = geometry.pc_separation(pcs, values)
    assert sep == pytest.approx(
        {
            "pc1_abs_corr_magnitude": 1.0,
            "pc1_abs_corr_sign": 0.0,
            "pc2_abs_corr_magnitude": 0.0,
            "pc2_abs_corr_sign": 1.0,
        },
        abs=1e-12,
    )


def test_value_bins_on_a_worked_example():
    """Catches bins off by one at their edges or labels that do not close the last bin: three
    bins over [−1.5, 1.5] have edges −0.5 and 0.5, each bin holding its lower edge."""
    which, labels = geometry.value_bins(np.array([-1.5, -0.5, 0.49, 0.5, 1.5]), -1.5, 1.5, 3)
    assert which.tolist() == [0, 1, 1, 2, 2]
    assert labels == ["[-1.5, -0.5)", "[-0.5, 0.5)", "[0.5, 1.5]"]


def _context(model, tmp_path, *overrides):
    cfg = load_config(
        embed.EmbedConfig, ROOT / "configs" / "embed.yaml", ["device=cpu", *overrides]
    )
    data_cfg = data.DataConfig(m=3, n=3, rank=1)
    values, ids = data.value_tokens(data_cfg, -0.03, 0.03)
    return embed.Context(cfg, model, 7, data_cfg, values, ids, tmp_path, torch.device("cpu"))


def _small_model():
    from model import MatrixBert
    from modeling_bert import BertConfig

    torch.manual_seed(0)
    sizes = {"hidden_size": 8, "intermediate_size": 8, "max_position_embeddings": 16}
    return MatrixBert(BertConfig(num_hidden_layers=1, num_attention_heads=2, **sizes)).eval()


def test_token_norm_numbers_of_known_embeddings(tmp_path):
    """Catches token_norm's table (Fig. 7's checks) read off the wrong values or tokens: the
    embedding of v set to (2 + 10v) e₀ on v = −0.03 .. 0.03 gives norms 1.7 .. 2.3, smallest at
    v = −0.03, pairs (v, −v) 0.2 / 2, 0.4 / 2, 0.6 / 2 apart (mean relative difference 0.2),
    norm(v) and norm(−v) anticorrelated, and no correlation with |v|."""
    model = _small_model()
    ctx = _context(model, tmp_path)
    table = model.backbone.embeddings.word_embeddings.weight
    with torch.no_grad():
        for v, i in zip(ctx.values, ctx.ids):
            table[i] = 0.0
            table[i, 0] = 2 + 10 * v
    summary, _ = embed.run_token_norm(ctx)
    want = {"num_values": 7, "norm_min": 1.7, "norm_max": 2.3, "norm_mean": 2.0}
    want.update(norm_argmin_value=-0.03, num_pairs=3, norm_symmetry_corr=-1.0)
    want.update(norm_symmetry_rel_diff=0.2, norm_corr_abs_value=0.0)
    assert {k: summary[k] for k in want} == pytest.approx(want, abs=1e-6)
    assert summary["figure"]["norms"] == pytest.approx([1.7, 1.8, 1.9, 2.0, 2.1, 2.2, 2.3])
    csv = (tmp_path / "token_norm.csv").read_text().splitlines()
    assert csv[0] == "value,norm" and csv[1].startswith("-0.03,1.7")


def test_permute_numbers_are_the_losses_under_each_permutation(tmp_path):
    """Catches the permute table's numbers taken from the wrong loss or averaged wrongly: the loss
    before is the model's on the script's matrices, each permutation's the loss with the
    positional embeddings permuted by the seeded draw, the after-mean their mean, the ratio
    after-mean / before, and moved_frac the share of positions a permutation moves."""
    model = _small_model()
    sizes = ["data.num_samples=6", "data.batch_size=4", "embed.num_permutations=3"]
    ctx = _context(model, tmp_path, *sizes, "seed=3")
    summary, _ = embed.run_permute(ctx)
    batches = data.MatrixSampler(ctx.data_cfg, "cpu", seed=3).sample_many(6, 4, 3, 3)
    before = evaluate(model, batches)
    gen = torch.Generator().manual_seed(3)
    after = []
    for _ in range(3):
        perm = torch.randperm(9, generator=gen)
        with embed.permuted_positions(model, perm):
            moved = (perm != torch.arange(9)).sum().item() / 9  # the share of 9 positions
            after.append({**evaluate(model, batches), "moved": moved})
    assert summary["loss_before"] == before["loss"]
    assert summary["loss_mask_before"] == before["loss_mask"]
    assert [p["loss"] for p in summary["permutations"]] == [a["loss"] for a in after]
    moved = [p["moved_frac"] for p in summary["permutations"]]
    assert moved == pytest.approx([a["moved"] for a in after])
    mean = np.mean([a["loss"] for a in after])
    assert summary["loss_after_mean"] == pytest.approx(mean)
    assert summary["loss_after_std"] == pytest.approx(np.std([a["loss"] for a in after]))
    assert summary["loss_obs_after_mean"] == pytest.approx(np.mean([a["loss_obs"] for a in after]))
    assert summary["loss_ratio_after_before"] == pytest.approx(mean / before["loss"])


def test_pos_norm_and_token_pca_numbers_of_known_embeddings(tmp_path):
    """Catches pos_norm read off positions the matrix does not use (a 3×3 matrix uses rows 0..8
    of the table) and token_pca's explained variances mixed up: positions p = 0..8 set to
    (1 + p) e₀ have norms 1..9 (mean 5, std √(20/3)); value tokens spread along two orthogonal
    directions with variances 4 and 4/9 explain 9/10 and 1/10 of the variance."""
    model = _small_model()
    ctx = _context(model, tmp_path)
    with torch.no_grad():
        pos = model.backbone.embeddings.position_embeddings.weight
        pos.zero_()
        pos[:9, 0] = torch.arange(1.0, 10.0)
        pos[9:, 0] = 100.0  # rows the matrix does not use
        table = model.backbone.embeddings.word_embeddings.weight
        # 7 values: a = −3..3 (variance 4) and b ⊥ a, both of mean 0, b scaled to variance 4/9
        b = torch.tensor([1.0, 0.0, -1.0, 0.0, -1.0, 0.0, 1.0]) * math.sqrt(7) / 3
        for k, i in enumerate(ctx.ids):
            table[i] = 0.0
            table[i, 0], table[i, 1] = k - 3, b[k]
    summary, _ = embed.run_pos_norm(ctx)
    want = {"norm_min": 1.0, "norm_max": 9.0, "norm_mean": 5.0, "norm_std": math.sqrt(20 / 3)}
    assert {k: summary[k] for k in want} == pytest.approx(want)
    summary, _ = embed.run_token_pca(ctx)
    assert summary["explained_variance_pc1"] == pytest.approx(0.9, abs=1e-6)
    assert summary["explained_variance_pc2"] == pytest.approx(0.1, abs=1e-6)


def test_token_progress_projects_every_step_on_the_final_components(tiny_run, tmp_path):
    """Catches token_progress fitting a PCA per step (its panels then share no axes) or reading
    the wrong checkpoint's embeddings: each step's numbers are its own embeddings projected on
    the final checkpoint's top-2 components."""
    run, _ = tiny_run
    cfg = embed_config(tmp_path, run, "exp_type=token_progress")
    final, ckpt = load_checkpoint(run / "step_000020.pt")
    data_cfg = data.DataConfig(**ckpt["config"]["data"])
    values, ids = data.value_tokens(data_cfg, cfg.embed.value_min, cfg.embed.value_max)
    ctx = embed.Context(cfg, final, 20, data_cfg, values, ids, tmp_path, torch.device("cpu"))
    summary, rows = embed.run_token_progress(ctx)
    pca = geometry.fit_pca(embed.token_embeddings(final, ids))
    for row, step in zip(rows, [10, 20], strict=True):
        model, _ = load_checkpoint(run / f"step_{step:06d}.pt")
        emb = embed.token_embeddings(model, ids)
        want = geometry.pc_separation(pca.transform(emb), values)
        want["norm_symmetry_corr"] = geometry.norm_symmetry(values, np.linalg.norm(emb, axis=1))[
            "norm_symmetry_corr"
        ]
        assert row == pytest.approx({"step": step, **want}), step
