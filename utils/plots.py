"""Figures: one style, one way to save, the pyplot entry every figure goes through (Agg, files
only, imported when a figure is drawn), and the figures the training loop and several scripts
draw (loss curves with the hidden progress, the layers × heads attention grid)."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import torch


def plot_style() -> dict:
    """Matplotlib defaults for every figure (passed to `plt.rc_context`, never set globally)."""
    return {
        "figure.dpi": 110,
        "savefig.dpi": 150,
        "savefig.bbox": "tight",
        "axes.grid": True,
        "grid.alpha": 0.3,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "font.size": 10,
    }


def close_figure(fig: Any) -> None:
    pyplot().close(fig)


def save_figure(fig: Any, out_dir: Path, stem: str, pdf: bool = False) -> list[Path]:
    """Save `fig` as PNG (and PDF for the paper's figures); returns the paths written."""
    paths = [Path(out_dir) / f"{stem}.png"] + ([Path(out_dir) / f"{stem}.pdf"] if pdf else [])
    for p in paths:
        fig.savefig(p)
    return paths


def pyplot():
    """matplotlib.pyplot, imported when a figure is drawn: on the Agg backend (files only) unless
    a backend was chosen already (a notebook's inline one is kept, so its figures still show)."""
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:  # not yet chosen (a notebook has chosen inline)
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def text_colour(rgba: tuple) -> str:
    """Black text on light cells, white on dark ones (relative luminance of the cell colour)."""
    r, g, b = rgba[:3]
    return "white" if 0.2126 * r + 0.7152 * g + 0.0722 * b < 0.5 else "black"


ROLE_COLOURS = {"row": "tab:blue", "column": "tab:orange", "self": "tab:green"}


def loss_figure(
    records: list[dict],
    drop: dict,
    title: str = "",
    shape: tuple[int, int] | None = None,
    roles: list[list[str]] | None = None,
) -> Any:
    """The training curves against step, the drop's start marked on every panel: losses (log
    scale); and, when the records hold the hidden-progress measures (train.progress), each
    head's attention share within its row or column, and representation collapse per layer.
    `shape` (m, n) draws the chance level of the shares; `roles` [layer][head] (the roles the
    heads end with, measures.head_roles) colours the heads."""
    plt = pyplot()
    steps = [r["step"] for r in records]
    progress = any("att_row" in r for r in records)
    panels = 3 if progress else 1
    with plt.rc_context(plot_style()):
        fig, axes = plt.subplots(
            panels, 1, figsize=(7.5, 3.4 * panels), sharex=True, squeeze=False, layout="constrained"
        )
        axes = axes[:, 0]
        ax = axes[0]
        for key, label, style in (
            ("loss", "L (all entries)", "-"),
            ("loss_obs", "L_obs (observed)", "-"),
            ("loss_mask", "L_mask (hidden)", "-"),
            ("eval_loss", "L on fresh eval matrices", ":"),
        ):
            xs = [r["step"] for r in records if r.get(key) is not None]
            ys = [r[key] for r in records if r.get(key) is not None]
            if ys:
                ax.plot(xs, ys, style, label=label, lw=1.3)
        ax.set(ylabel="MSE (log scale)", yscale="log")
        ax.set_title(f"{title}: losses" if title else "losses", loc="left", fontsize=10)
        if progress:
            _plot_head_shares(axes[1], records, shape, roles)
            _plot_collapse(axes[2], records)
        for a in axes:
            if drop.get("drop_step") is not None:
                a.axvline(drop["drop_step"], color="k", ls="--", lw=0.9, label="drop starts")
            a.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=8)
        axes[-1].set_xlabel("step")
        axes[-1].xaxis.set_major_formatter(_steps_formatter())
        if len(steps) == 1:
            for a in axes:
                a.set_xlim(steps[0] - 1, steps[0] + 1)
    return fig


def _steps_formatter() -> Any:
    """Step ticks as 2.5k, 10k ... so that long runs' labels do not run into each other."""
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda x, _: f"{x / 1000:g}k" if abs(x) >= 1000 else f"{x:g}")


def _plot_head_shares(
    ax: Any, records: list[dict], shape: tuple[int, int] | None, roles: list[list[str]] | None
) -> None:
    """Each head's share within its row (row heads), its column (column heads), on itself (self
    heads), or the larger of its row and column shares (the rest, grey)."""
    logged = [r for r in records if "att_row" in r]
    xs = [r["step"] for r in logged]
    layers, heads = len(logged[-1]["att_row"]), len(logged[-1]["att_row"][0])
    roles = roles or [["other"] * heads for _ in range(layers)]
    labelled = set()
    for i, layer in enumerate(roles):
        for h, role in enumerate(layer):
            key = {"row": "att_row", "column": "att_col", "self": "att_self"}.get(role)
            if key is None:
                ys = [max(r["att_row"][i][h], r["att_col"][i][h]) for r in logged]
                kw = {"color": "0.75", "lw": 0.7, "zorder": 1}
                label = "other heads: larger of row, column share"
            else:
                ys = [r[key][i][h] for r in logged]
                kw = {"color": ROLE_COLOURS[role], "lw": 1.3, "zorder": 2}
                label = (
                    f"{role} heads: share on their {role}"
                    if role != "self"
                    else ("self heads: share on the query itself")
                )
                ax.annotate(
                    f"L{i + 1}H{h + 1}",
                    (xs[-1], ys[-1]),
                    fontsize=7,
                    color=kw["color"],
                    xytext=(2, 0),
                    textcoords="offset points",
                    va="center",
                )
            ax.plot(xs, ys, label=None if label in labelled else label, **kw)
            labelled.add(label)
    if shape is not None:
        m, n = shape
        ax.axhline((n - 1) / (m * n), color="tab:blue", ls=":", lw=0.8, label="chance, row")
        if m != n:
            ax.axhline((m - 1) / (m * n), color="tab:orange", ls=":", lw=0.8, label="chance, col")
    ax.axhline(0.5, color="0.4", ls="-.", lw=0.7, label="role threshold (1/2)")
    ax.set(ylabel="share of attention", ylim=(0, 1.02))
    ax.set_title(
        "attention: heads becoming row / column heads (LiHj: layer i, head j, 1-based)",
        loc="left",
        fontsize=10,
    )


def _plot_collapse(ax: Any, records: list[dict]) -> None:
    """Mean |cosine| between positions' hidden states, after the embeddings and each layer."""
    plt = pyplot()
    logged = [r for r in records if r.get("collapse")]
    if not logged:
        return
    xs = [r["step"] for r in logged]
    depth = len(logged[-1]["collapse"])
    colours = plt.get_cmap("viridis")(np.linspace(0, 0.9, depth))
    for i in range(depth):
        ys = [r["collapse"][i] for r in logged]
        label = "after the embeddings" if i == 0 else f"after layer {i}"
        ax.plot(xs, ys, color=colours[i], lw=1.2, label=label)
    ax.set(ylabel="mean |cos| between positions", ylim=(0, 1.02))
    ax.set_title(
        "representation collapse (1: all positions' hidden states parallel)",
        loc="left",
        fontsize=10,
    )


def plot_losses(
    records: list[dict],
    out_dir: Path,
    drop: dict,
    title: str = "",
    shape: tuple[int, int] | None = None,
    roles: list[list[str]] | None = None,
) -> list[Path]:
    """`loss.png`: `loss_figure` saved into `out_dir`."""
    fig = loss_figure(records, drop, title, shape, roles)
    paths = save_figure(fig, out_dir, "loss")
    pyplot().close(fig)
    return paths


def plot_attention_grid(
    pattern: torch.Tensor,
    m: int,
    n: int,
    title: str,
    observed: torch.Tensor | None = None,
    roles: list[list[str]] | None = None,
) -> Any:
    """The layers × heads grid of mean attention patterns [L, H, T, T] on one colour scale
    (square-root, so weak structure still shows), layers and heads 1-based, each head's role
    (measures.head_roles) in its title and frame colour; a structured mask [m, n] beside it."""
    plt = pyplot()
    from matplotlib.colors import PowerNorm

    layers, heads, t, _ = pattern.shape
    extra = 1 if observed is not None else 0
    values = pattern.float().numpy()
    norm = PowerNorm(gamma=0.5, vmin=0.0, vmax=max(float(values.max()), 1e-6))
    with plt.rc_context({**plot_style(), "axes.grid": False}):
        fig, axes = plt.subplots(
            layers,
            heads + extra,
            figsize=(2.0 * (heads + extra) + 1.2, 2.0 * layers + 1.0),
            squeeze=False,
            layout="constrained",
        )
        for i in range(layers):
            for h in range(heads):
                ax = axes[i, h]
                im = ax.imshow(values[i, h], cmap="viridis", norm=norm, interpolation="nearest")
                for edge in range(n, t, n):  # row boundaries of the matrix
                    ax.axhline(edge - 0.5, color="w", lw=0.3, alpha=0.5)
                    ax.axvline(edge - 0.5, color="w", lw=0.3, alpha=0.5)
                ax.set_xticks([0, t - 1])
                ax.set_yticks([0, t - 1])
                ax.tick_params(labelsize=7)
                role = roles[i][h] if roles else "other"
                name = f"L{i + 1} H{h + 1}" + ("" if role == "other" else f": {role}")
                colour = ROLE_COLOURS.get(role, "black")
                ax.set_title(name, fontsize=10, color=colour)
                if role in ROLE_COLOURS:
                    for spine in ax.spines.values():
                        spine.set(visible=True, color=colour, linewidth=2.5)
                if h == 0:
                    ax.set_ylabel(f"layer {i + 1}: query")
                if i == layers - 1:
                    ax.set_xlabel("key")
            if extra:
                axes[i, heads].axis("off")
        fig.colorbar(im, ax=axes[:, :heads], shrink=0.6, label="mean attention (sqrt scale)")
        if observed is not None:
            ax = axes[0, heads]
            ax.axis("on")
            ax.imshow(observed.float().numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_title("mask (white = observed)", fontsize=9)
            ax.set_xticks(range(observed.shape[1]))
            ax.set_yticks(range(observed.shape[0]))
            ax.tick_params(labelsize=7)
            ax.set_xlabel("column (0-based)", fontsize=8)
            ax.set_ylabel("row (0-based)", fontsize=8)
        fig.suptitle(
            f"{title}: mean attention pattern of every head\n(query ↓, key →: position i·n + j "
            f"of the {m}×{n} matrix, 0-based; layers L and heads H 1-based, as in the paper)",
            fontsize=10,
        )
    return fig


# ----------------------------------------------------------------------------------------------
# Panels of scatter plots and curves (embed.py's figures; any script may use them)

MAX_COLUMNS = 4  # panels per row, so a figure of many checkpoints stays legible at page width
MARKERS = "osD^vP*Xh<>p"  # one shape per row / column group, on top of its colour


def panel_grid(plt, k: int, share: bool = False, size: tuple = (3.4, 3.1)):
    """k panels in rows of at most MAX_COLUMNS; returns (figure, the k axes)."""
    cols = min(k, MAX_COLUMNS)
    rows = -(-k // cols)
    size = (4.6, 3.8) if k == 1 else size
    fig, axs = plt.subplots(
        rows,
        cols,
        figsize=(size[0] * cols + 1.8, size[1] * rows + 1.0),
        squeeze=False,
        sharex=share,
        sharey=share,
        layout="constrained",
    )
    for ax in axs.flat[k:]:
        ax.set_visible(False)
    for ax in axs.flat[:k]:
        ax.tick_params(labelbottom=True, labelleft=True)  # shared axes hide them by default
    return fig, list(axs.flat[:k])


def wrapped_suptitle(fig, text: str) -> None:
    """The figure's title, wrapped to the figure's width (a one-panel figure is narrow)."""
    fig.suptitle(textwrap.fill(text, width=int(fig.get_figwidth() * 9)))


def plot_curve(x, y, xlabel: str, ylabel: str, title: str, xticks=None) -> Any:
    """One line plot."""
    plt = pyplot()
    with plt.rc_context(plot_style()):
        fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
        ax.plot(x, y, lw=1.4)
        if xticks is not None:
            ax.set_xticks(xticks)
        ax.set(xlabel=xlabel, ylabel=ylabel)
        ax.set_title(title, fontsize=10)
    return fig


def plot_scatter_panels(
    panels: list[tuple[str, np.ndarray]],
    groups: np.ndarray,
    labels: list[str],
    *,
    title: str,
    axes_labels: tuple[str, str],
    legend_title: str,
    ordered: bool,
    share: bool = False,
) -> Any:
    """One scatter per panel (title, coords [N, 2]), at most MAX_COLUMNS a row, coloured by
    `groups`, one legend. Ordered groups (value bins) get a sequential colour map; unordered ones
    (rows, columns) a qualitative palette and a marker shape each."""
    plt = pyplot()
    k = len(labels)
    if ordered:
        colors = plt.get_cmap("viridis")(np.linspace(0, 1, k))
    else:
        colors = plt.get_cmap("tab10" if k <= 10 else "tab20")(np.arange(k) % 20)
    with plt.rc_context(plot_style()):
        fig, axes = panel_grid(plt, len(panels), share)
        for ax, (panel_title, coords) in zip(axes, panels):
            coords = np.asarray(coords)
            for g, label in enumerate(labels):
                sel = groups == g
                marker = "o" if ordered else MARKERS[g % len(MARKERS)]
                ax.scatter(*coords[sel].T, s=18, color=colors[g], marker=marker, label=label)
            ax.set(title=panel_title, xlabel=axes_labels[0], ylabel=axes_labels[1])
            ax.locator_params(nbins=5)
        handles, names = axes[0].get_legend_handles_labels()
        fig.legend(handles, names, title=legend_title, loc="outside right center", frameon=False)
        wrapped_suptitle(fig, title)
    return fig


def plot_highlight(
    coords: np.ndarray, groups: np.ndarray, labels: list[str], *, title: str, axes_labels: tuple
) -> Any:
    """Small multiples: one panel per group, its points in colour over all the others in grey,
    at most MAX_COLUMNS a row, on shared axes (groups that overlap stay apart)."""
    plt = pyplot()
    coords = np.asarray(coords)
    with plt.rc_context(plot_style()):
        fig, axes = panel_grid(plt, len(labels), share=True, size=(3.0, 2.8))
        for g, (ax, label) in enumerate(zip(axes, labels)):
            sel = groups == g
            ax.scatter(*coords[~sel].T, s=12, color="0.8")
            ax.scatter(*coords[sel].T, s=28, color="C3", edgecolor="k", linewidth=0.5)
            ax.set(title=label, xlabel=axes_labels[0], ylabel=axes_labels[1])
            ax.locator_params(nbins=4)
        wrapped_suptitle(fig, title)
    return fig


def plain_log_ticks(ax) -> None:
    """Plain tick labels on a log y axis (0.05, not 5×10⁻²), with the minor ticks at 2, 3 and 5
    labelled too when the axis spans under 1.5 decades (too few for the major ticks alone)."""
    from matplotlib.ticker import FuncFormatter

    def minor(y: float, _) -> str:
        lo, hi = ax.get_ylim()
        mantissa = round(y / 10 ** np.floor(np.log10(y)))
        return f"{y:g}" if np.log10(hi / lo) < 1.5 and mantissa in (2, 3, 5) else ""

    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(minor))
