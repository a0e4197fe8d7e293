"""Token and positional embeddings of a trained model (paper Fig. 7 and its appendix figures).

    python3 embed.py --config configs/embed.yaml --exp_type=token_norm
    python3 embed.py --config configs/embed.yaml --exp_type=pos_tsne --ckpt.step=20000

`exp_type` picks one experiment; each writes into `out_dir/<exp_type>/` its resolved config.yaml,
summary.json (every number it prints; under `figure`, the points its figures show, so that
scripts/redraw.py can redraw them), table.md and its figures (PNG, and PDF for the paper's):

  token_norm      ℓ2 norm of each value token's embedding against its value, over
                  [embed.value_min, embed.value_max] (Fig. 7). Checks: corr(norm(v), norm(−v))
                  and their mean relative difference (symmetry about 0); corr(norm, |v|).
  token_pca       the top-2 principal components of those embeddings, coloured by value bins
                  (Fig. 7). Checks: |corr(PC, |v|)| (magnitude) and |corr(PC, sign v)| (sign).
  pos_norm        ℓ2 norm of the positional embeddings the matrix uses (the first m·n rows).
  pos_tsne        t-SNE of those positional embeddings, coloured by column (Fig. 7) and by row.
                  Checks: silhouette scores of the embeddings grouped by column and by row, in
                  the embedding space itself (raw) and after t-SNE; `groups_by` names the axis
                  the raw ones favour (better_axis: row, column or neither).
  token_progress  token_pca at each of `ckpt.steps`, projected on the final checkpoint's PCs.
  pos_progress    pos_tsne at each of `ckpt.steps` (both colourings).
  permute         the loss before and after randomly permuting the positional embeddings the
                  matrix uses, over `embed.num_permutations` permutations, on `data.num_samples`
                  fresh matrices (masked_mse: all, observed and hidden entries).

The paper, after the drop: the norm is symmetric about 0, the two PCs encode magnitude and sign,
positional embeddings cluster by column, and permuting them breaks the model. Token ids are made
with data.tokenize from the checkpoint's data config; m, n default to the checkpoint's too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from analysis import AnalysisConfig, CkptSection, load_from_section, open_analysis
from data import DataConfig, MatrixSampler, value_tokens
from measures import LOSSES, evaluate
from model import MatrixBert
from utils.config import UserError, cli, opt, repo_relative, resolve_path
from utils.files import atomic_write_text
from utils.geometry import (
    cluster_scores,
    fit_pca,
    grid_labels,
    norm_symmetry,
    pc_separation,
    tsne_2d,
    value_bins,
)
from utils.plots import (
    plain_log_ticks,
    plot_curve,
    plot_highlight,
    plot_scatter_panels,
    plot_style,
    pyplot,
    save_figure,
)
from utils.results import Table, prepare_output, write_results
from utils.runs import checkpoints

if TYPE_CHECKING:
    from matplotlib.figure import Figure

EXP_TYPES = (
    "token_norm",
    "token_pca",
    "pos_norm",
    "pos_tsne",
    "token_progress",
    "pos_progress",
    "permute",
)


@dataclass
class EmbedCkpt(CkptSection):
    steps: list[int] = opt(
        [4000, 10000, 14000, 16000, 20000],
        "checkpoints for token_progress / pos_progress; empty: every checkpoint in `run`",
    )


@dataclass
class EmbedSection:
    value_min: float = opt(-1.5, "smallest value whose token embedding is studied")
    value_max: float = opt(1.5, "largest value whose token embedding is studied")
    num_bins: int = opt(6, "equal-width value bins that colour the token PCA (paper: 6)")
    num_permutations: int = opt(5, "random permutations of the positional embeddings (permute)")
    tsne_perplexity: float = opt(30.0, "t-SNE perplexity; lowered to (points − 1) if above it")

    def __post_init__(self) -> None:
        if self.value_min >= self.value_max:
            raise UserError("'embed.value_min' must be below 'embed.value_max'")
        if self.num_bins < 1 or self.num_permutations < 1 or self.tsne_perplexity <= 0:
            raise UserError(
                "'embed.num_bins' and 'embed.num_permutations' must be ≥ 1 and "
                "'embed.tsne_perplexity' positive"
            )


@dataclass
class EmbedConfig(AnalysisConfig):
    script = "embed"  # outputs: results/<run folder name>/embed

    exp_type: str = opt("token_norm", "the experiment to run", EXP_TYPES)
    seed: int = opt(0, "seed for data, permutations and t-SNE")
    ckpt: EmbedCkpt = field(default_factory=EmbedCkpt)
    embed: EmbedSection = field(default_factory=EmbedSection)

    def __post_init__(self) -> None:
        if self.exp_type not in EXP_TYPES:
            raise UserError(f"unknown exp_type '{self.exp_type}' (valid: {', '.join(EXP_TYPES)})")


# ----------------------------------------------------------------------------------------------
# Embeddings and their measures


def token_embeddings(model: MatrixBert, ids: list[int]) -> np.ndarray:
    """Rows of the token embedding table for `ids`: [V, D]."""
    table = model.backbone.embeddings.word_embeddings.weight
    return table[ids].detach().float().cpu().numpy()


def position_embeddings(model: MatrixBert, m: int, n: int) -> np.ndarray:
    """The positional embeddings of an m×n matrix (entry (i, j) at row i·n + j): [m·n, D]."""
    table = model.backbone.embeddings.position_embeddings.weight
    return table[: m * n].detach().float().cpu().numpy()


@contextlib.contextmanager
def permuted_positions(model: MatrixBert, perm: torch.Tensor) -> Iterator[None]:
    """Positions 0..len(perm)−1 use the embeddings of positions `perm`; restored on exit.

    A weight intervention (no hook sees the positional embeddings before the LayerNorm)."""
    weight = model.backbone.embeddings.position_embeddings.weight
    saved = weight.detach().clone()
    try:
        with torch.no_grad():
            weight[: len(perm)] = saved[perm.to(weight.device)]
        yield
    finally:
        with torch.no_grad():
            weight.copy_(saved)


# ----------------------------------------------------------------------------------------------
# The experiments. Each takes the run's context and returns (summary, table rows), the summary's
# `figure` holding the points its figures show; beside each, the function that draws those
# figures from the summary alone (so that scripts/redraw.py can redraw them). Layers, rows and
# columns are 1-based on the figures, positions 0-based.


@dataclass
class Context:
    cfg: EmbedConfig
    model: MatrixBert
    step: int | None
    data_cfg: DataConfig
    values: np.ndarray
    ids: list[int]
    out_dir: Path
    device: torch.device

    @property
    def m(self) -> int:
        return self.data_cfg.m

    @property
    def n(self) -> int:
        return self.data_cfg.n


def rounded(x: np.ndarray) -> list:
    """An array as nested lists of floats with 6 significant digits (summary.json's `figure`)."""
    return np.vectorize(lambda v: float(f"{v:.6g}"), otypes=[float])(np.asarray(x)).tolist()


def _as_rows(summary: dict) -> list[dict]:
    return [
        {"quantity": k, "value": v} for k, v in summary.items() if not isinstance(v, (list, dict))
    ]


def _values_figure(ctx: Context) -> dict:
    """What a figure of the value tokens needs besides its points: the values and their bins."""
    e = ctx.cfg.embed
    return {
        "values": rounded(ctx.values),
        "value_min": e.value_min,
        "value_max": e.value_max,
        "num_bins": e.num_bins,
    }


def _bins(summary: dict) -> tuple[np.ndarray, list[str]]:
    f = summary["figure"]
    return value_bins(np.asarray(f["values"]), f["value_min"], f["value_max"], f["num_bins"])


def run_token_norm(ctx: Context) -> tuple[dict, list[dict]]:
    norms = np.linalg.norm(token_embeddings(ctx.model, ctx.ids), axis=1)
    summary = {
        "step": ctx.step,
        "num_values": len(ctx.values),
        "norm_min": float(norms.min()),
        "norm_max": float(norms.max()),
        "norm_mean": float(norms.mean()),
        "norm_argmin_value": float(ctx.values[norms.argmin()]),
        **norm_symmetry(ctx.values, norms),
    }
    csv = "value,norm\n" + "".join(f"{v:g},{x:.6g}\n" for v, x in zip(ctx.values, norms))
    atomic_write_text(ctx.out_dir / "token_norm.csv", csv)
    summary["figure"] = {"values": rounded(ctx.values), "norms": rounded(norms)}
    return summary, _as_rows(summary)


def _token_norm_figures(s: dict) -> dict:
    f = s["figure"]
    title = f"ℓ2 norm of each value token's embedding (step {s['step']})"
    return {"token_norm": plot_curve(f["values"], f["norms"], "value", "ℓ2 norm", title)}


def run_token_pca(ctx: Context) -> tuple[dict, list[dict]]:
    emb = token_embeddings(ctx.model, ctx.ids)
    pca = fit_pca(emb)
    pcs = pca.transform(emb)
    summary = {
        "step": ctx.step,
        "explained_variance_pc1": float(pca.explained_variance_ratio_[0]),
        "explained_variance_pc2": float(pca.explained_variance_ratio_[1]),
        **pc_separation(pcs, ctx.values),
    }
    summary["figure"] = {**_values_figure(ctx), "pcs": rounded(pcs)}
    return summary, _as_rows(summary)


def _token_figures(s: dict, panels: list, stem: str, title: str, axes: tuple) -> dict:
    """Value tokens' PCs, coloured by value bin, one panel per checkpoint (shared axes)."""
    groups, labels = _bins(s)
    fig = plot_scatter_panels(
        panels,
        groups,
        labels,
        title=title,
        axes_labels=axes,
        legend_title="value",
        ordered=True,
        share=len(panels) > 1,
    )
    return {stem: fig}


def _token_pca_figures(s: dict) -> dict:
    axes = tuple(f"PC{k} ({s[f'explained_variance_pc{k}']:.0%} of the variance)" for k in (1, 2))
    title = f"Value tokens' embeddings on their top-2 principal components (step {s['step']})"
    return _token_figures(s, [("", s["figure"]["pcs"])], "token_pca", title, axes)


def run_pos_norm(ctx: Context) -> tuple[dict, list[dict]]:
    norms = np.linalg.norm(position_embeddings(ctx.model, ctx.m, ctx.n), axis=1)
    summary = {
        "step": ctx.step,
        "m": ctx.m,
        "n": ctx.n,
        "norm_min": float(norms.min()),
        "norm_max": float(norms.max()),
        "norm_mean": float(norms.mean()),
        "norm_std": float(norms.std()),
    }
    csv = "position,row,column,norm\n" + "".join(
        f"{p},{p // ctx.n},{p % ctx.n},{x:.6g}\n" for p, x in enumerate(norms)
    )
    atomic_write_text(ctx.out_dir / "pos_norm.csv", csv)
    summary["figure"] = {"norms": rounded(norms)}
    return summary, _as_rows(summary)


def _pos_norm_figures(s: dict) -> dict:
    norms, n = s["figure"]["norms"], s["n"]
    title = f"ℓ2 norm of each positional embedding of the {s['m']}×{n} matrix (step {s['step']})"
    xlabel = "position i·n + j (row-major, 0-based; ticks at row starts)"
    x = np.arange(len(norms))
    return {"pos_norm": plot_curve(x, norms, xlabel, "ℓ2 norm", title, xticks=x[::n])}


def _pos_tsne(model: MatrixBert, ctx: Context) -> tuple[np.ndarray, dict]:
    pos = position_embeddings(model, ctx.m, ctx.n)
    coords, used = tsne_2d(pos, ctx.cfg.embed.tsne_perplexity, ctx.cfg.seed)
    return coords, {"perplexity": used, **cluster_scores(pos, coords, ctx.m, ctx.n)}


def run_pos_tsne(ctx: Context) -> tuple[dict, list[dict]]:
    coords, scores = _pos_tsne(ctx.model, ctx)
    summary = {"step": ctx.step, "m": ctx.m, "n": ctx.n, **scores}
    summary["figure"] = {"coords": rounded(coords)}
    return summary, _as_rows(summary)


def _lines(m: int, n: int) -> list[tuple[str, np.ndarray, int]]:
    """(kind, each position's line index, how many lines) for columns, then rows."""
    rows, cols = grid_labels(m, n)
    return [("column", cols, n), ("row", rows, m)]


def _pos_tsne_figures(s: dict) -> dict:
    m, n = s["m"], s["n"]
    figures = {}
    for kind, groups, count in _lines(m, n):
        title = (
            f"t-SNE of the positional embeddings of the {m}×{n} matrix (step {s['step']}): "
            f"in each panel one {kind}'s {count} positions in red, the rest grey"
        )
        labels = [f"{kind} {i + 1} (1-based)" for i in range(count)]
        figures[f"pos_tsne_{kind}"] = plot_highlight(
            s["figure"]["coords"], groups, labels, title=title, axes_labels=("t-SNE 1", "t-SNE 2")
        )
    return figures


def progress_steps(cfg: EmbedConfig) -> list[int]:
    """`ckpt.steps`, or every checkpoint in `ckpt.run` when that list is empty."""
    section = cfg.ckpt
    if section.path:
        raise UserError(f"{cfg.exp_type} needs ckpt.run with ckpt.steps; ckpt.path names one file")
    steps = section.steps or list(checkpoints(resolve_path(section.run)))
    if not steps:
        raise UserError(f"no checkpoints in {section.run} for {cfg.exp_type}")
    return steps


def _each_checkpoint(ctx: Context) -> Iterator[tuple[int, MatrixBert]]:
    for step in progress_steps(ctx.cfg):
        model, ckpt = load_from_section(ctx.cfg.ckpt, ctx.device, step=step)
        yield int(ckpt.get("step", step)), model


def run_token_progress(ctx: Context) -> tuple[dict, list[dict]]:
    pca = fit_pca(token_embeddings(ctx.model, ctx.ids))  # the final checkpoint's components
    panels, rows = [], []
    for step, model in _each_checkpoint(ctx):
        emb = token_embeddings(model, ctx.ids)
        pcs = pca.transform(emb)
        norms = np.linalg.norm(emb, axis=1)
        rows.append(
            {
                "step": step,
                **pc_separation(pcs, ctx.values),
                "norm_symmetry_corr": norm_symmetry(ctx.values, norms)["norm_symmetry_corr"],
            }
        )
        panels.append(rounded(pcs))
    figure = {**_values_figure(ctx), "pcs_by_step": panels}
    return {"final_step": ctx.step, "steps": rows, "figure": figure}, rows


def _token_progress_figures(s: dict) -> dict:
    panels = [(f"step {r['step']}", p) for r, p in zip(s["steps"], s["figure"]["pcs_by_step"])]
    final = s["final_step"]
    title = (
        f"Value tokens' embeddings during training, on the top-2 principal components of "
        f"step {final} (the same axes in every panel)"
    )
    axes = (f"PC1 of step {final}", f"PC2 of step {final}")
    return _token_figures(s, panels, "token_progress", title, axes)


def run_pos_progress(ctx: Context) -> tuple[dict, list[dict]]:
    panels, rows = [], []
    for step, model in _each_checkpoint(ctx):
        coords, scores = _pos_tsne(model, ctx)
        rows.append({"step": step, **scores})
        panels.append(rounded(coords))
    return {"m": ctx.m, "n": ctx.n, "steps": rows, "figure": {"coords_by_step": panels}}, rows


def _pos_progress_figures(s: dict) -> dict:
    m, n = s["m"], s["n"]
    panels = [(f"step {r['step']}", c) for r, c in zip(s["steps"], s["figure"]["coords_by_step"])]
    figures = {}
    for kind, groups, count in _lines(m, n):
        title = (
            f"t-SNE of the positional embeddings of the {m}×{n} matrix during training, "
            f"coloured by {kind} (each panel is its own t-SNE)"
        )
        labels = [f"{kind} {i + 1}" for i in range(count)]
        figures[f"pos_progress_{kind}"] = plot_scatter_panels(
            panels,
            groups,
            labels,
            title=title,
            axes_labels=("t-SNE 1", "t-SNE 2"),
            legend_title=f"{kind} (1-based)",
            ordered=False,
        )
    return figures


def run_permute(ctx: Context) -> tuple[dict, list[dict]]:
    sampler = MatrixSampler(ctx.data_cfg, ctx.device, seed=ctx.cfg.seed)
    section = ctx.cfg.data
    batches = sampler.sample_many(section.num_samples, section.batch_size, ctx.m, ctx.n)
    before = evaluate(ctx.model, batches)
    gen = torch.Generator().manual_seed(ctx.cfg.seed)
    t = ctx.m * ctx.n
    after = []
    for _ in range(ctx.cfg.embed.num_permutations):
        perm = torch.randperm(t, generator=gen)
        with permuted_positions(ctx.model, perm):
            losses = evaluate(ctx.model, batches)
        after.append({**losses, "moved_frac": float((perm != torch.arange(t)).float().mean())})
    mean_after = {  # None where there is nothing to average (no hidden entry: p_mask 0)
        k: None if before[k] is None else float(np.mean([a[k] for a in after])) for k in LOSSES
    }
    summary = {
        "step": ctx.step,
        "num_samples": ctx.cfg.data.num_samples,
        "loss_before": before["loss"],
        "loss_obs_before": before["loss_obs"],
        "loss_mask_before": before["loss_mask"],
        "loss_after_mean": mean_after["loss"],
        "loss_after_std": float(np.std([a["loss"] for a in after])),
        "loss_obs_after_mean": mean_after["loss_obs"],
        "loss_mask_after_mean": mean_after["loss_mask"],
        "loss_ratio_after_before": mean_after["loss"] / before["loss"],
        "permutations": after,
    }
    return summary, _as_rows(summary)


def plot_permute(summary: dict) -> Figure:
    """The loss with the original positional embeddings, with each random permutation of them, and
    the permutations' mean, per set of entries, log scale; the factor mean / original written."""
    plt = pyplot()
    after = summary["permutations"]
    keys = [("loss", "all"), ("loss_obs", "observed"), ("loss_mask", "hidden")]
    keys = [(k, label) for k, label in keys if summary[f"{k}_before"] is not None]
    spread = np.linspace(-0.08, 0.08, len(after)) if len(after) > 1 else np.zeros(1)
    with plt.rc_context(plot_style()):
        fig, ax = plt.subplots(figsize=(6.4, 4.4), layout="constrained")
        for i, (k, _) in enumerate(keys):
            before, each = summary[f"{k}_before"], [a[k] for a in after]
            mean = float(np.mean(each))
            labels = (
                "original positional embeddings",
                f"one random permutation ({len(after)} in all)",
                "mean over the permutations",
            )
            for (x, y, style), label in zip(
                (
                    (i - 0.15, before, {"s": 60, "color": "C0", "zorder": 3}),
                    (i + 0.15 + spread, each, {"s": 18, "color": "C1", "zorder": 3}),
                    (i + 0.15, mean, {"s": 600, "marker": "_", "color": "k", "zorder": 4}),
                ),
                labels,
            ):
                ax.scatter(x, y, label=label if i == 0 else None, **style)
            ratio = f"×{mean / before:.3g}"
            xy = (i, max(before, mean))
            kw = {"xytext": (0, 12), "textcoords": "offset points", "ha": "center", "fontsize": 9}
            ax.annotate(ratio, xy, **kw)
        ax.set_xticks(range(len(keys)), [label for _, label in keys])
        ax.set_xlabel("entries the MSE is taken over")
        ax.set_xlim(-0.6, len(keys) - 0.4)
        ax.set(ylabel="MSE (log scale)", yscale="log")
        plain_log_ticks(ax)
        ax.margins(y=0.25)
        ax.set_title(
            f"Loss before and after permuting the positional embeddings\n(step {summary['step']}, "
            f"{summary['num_samples']} matrices; ×: mean after / before)",
            fontsize=10,
        )
        fig.legend(loc="outside lower center", ncols=2, fontsize=9, frameon=False)
    return fig


@dataclass
class Experiment:
    run: Callable[[Context], tuple[dict, list[dict]]]
    figures: Callable[[dict], dict]  # summary -> {file stem: figure}
    stems: tuple[str, ...]  # the stems `figures` draws


EXPERIMENTS: dict[str, Experiment] = {
    "token_norm": Experiment(run_token_norm, _token_norm_figures, ("token_norm",)),
    "token_pca": Experiment(run_token_pca, _token_pca_figures, ("token_pca",)),
    "pos_norm": Experiment(run_pos_norm, _pos_norm_figures, ("pos_norm",)),
    "pos_tsne": Experiment(run_pos_tsne, _pos_tsne_figures, ("pos_tsne_column", "pos_tsne_row")),
    "token_progress": Experiment(run_token_progress, _token_progress_figures, ("token_progress",)),
    "pos_progress": Experiment(
        run_pos_progress, _pos_progress_figures, ("pos_progress_column", "pos_progress_row")
    ),
    "permute": Experiment(run_permute, lambda s: {"permute": plot_permute(s)}, ("permute",)),
}


def draw_figures(summary: dict, out_dir: Path) -> tuple[list[Path], list[str]]:
    """An experiment's figures (PNG; PDF too except for permute) from its summary.json alone
    (scripts/redraw.py uses it too). Returns the files written and the figures not drawn."""
    experiment = EXPERIMENTS[summary["exp_type"]]
    if summary["exp_type"] != "permute" and "figure" not in summary:
        why = "its points were not saved (summary.json has no 'figure' entry)"
        return [], [f"{stem}.png: {why}" for stem in experiment.stems]
    plt = pyplot()
    paths = []
    for stem, fig in experiment.figures(summary).items():
        paths += save_figure(fig, out_dir, stem, pdf=stem != "permute")
        plt.close(fig)
    return paths, []


def main(cfg: EmbedConfig) -> dict:
    run = open_analysis(cfg)
    model, ckpt, data_cfg, device = run.model, run.ckpt, run.data, run.device
    values, ids = value_tokens(
        data_cfg, cfg.embed.value_min, cfg.embed.value_max, "embed.value_min/value_max"
    )
    if cfg.exp_type.endswith("progress"):  # every checkpoint loads before anything is written
        for step in progress_steps(cfg):
            load_from_section(cfg.ckpt, device, step=step)
    out_dir = prepare_output(Path(cfg.out_dir) / cfg.exp_type, cfg)
    ctx = Context(cfg, model, ckpt.get("step"), data_cfg, values, ids, out_dir, device)
    summary, rows = EXPERIMENTS[cfg.exp_type].run(ctx)
    summary = {"exp_type": cfg.exp_type, **summary}
    draw_figures(summary, out_dir)
    table = Table(rows)
    write_results(out_dir, summary, {"table.md": [table]}, cfg, "embed")
    print(
        f"{cfg.exp_type} (checkpoint step {ctx.step}, {ctx.m}×{ctx.n})\n{table.markdown()}"
        f"outputs in {repo_relative(out_dir)}"
    )
    return summary


if __name__ == "__main__":
    cli(main, EmbedConfig, __doc__, "configs/embed.yaml", redraw=draw_figures)
