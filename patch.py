"""Activation patching: run −X, patch in activations from the run on X, and see whose answer wins.

    python3 patch.py --config configs/patch.yaml
    python3 patch.py --config configs/patch.yaml --patch.layers=null --patch.heads=[0,1]

The authors' causal test (their src/patch.py). The clean input is X, the corrupted input −X with
the same mask (`data.corrupt`). The clean run caches every head's z (`hook_z`, its output before
the attention output projection); the corrupted run is repeated with the clean z patched in at
`patch.layers` × `patch.heads` × `patch.positions` (null = all; negative layers count from the
end; the authors: every head and position of the last layer, `layers: [-1]`) through
`modeling_bert.patch_z_hooks`. `patch.heads` may name a role instead of indices (row, column,
self, row+column): this checkpoint's own heads with that role (measures.ROLE_RULE) within
`patch.layers`, e.g. `--patch.layers=null --patch.heads=row+column`. Reported: the MSE of the
patched output against X and against −X, at observed and at hidden entries, beside the clean and
the corrupted runs.

Beyond the authors, two sweeps, each scored by the share of the clean–corrupted gap that the
patch restores at hidden entries (`patch.sweep_entries`; `observed` suits a model that only copies):

    restored = (L_corr − L_patched) / (L_corr − L_clean),

where L is the MSE against X at those entries of the corrupted run, the patched run and the clean
run: 1 = the patch gives the clean answer's loss, 0 = no effect, < 0 = worse than no patch; null
where the clean run does not beat the corrupted one by 1% (MIN_GAP), as before the drop.
    heads      every (layer, head) alone: z of that head, all positions;
    positions  every (layer, position) alone, at `patch.position_site`: `resid_pre` (the layer's
               input, the whole residual stream; layer 0's input is the embedding output) or `z`
               (all heads of that layer, at that position).
Note: patching z at every layer does not give the clean output, because the residual stream still
carries the corrupted tokens; patching the embedding output (or a layer's whole input) does.

Writes to `out_dir`: patch.md (the main table), patch_heads.png and patch_positions.png (the sweeps;
layers and heads 1-based on the figures), summary.json and config.yaml.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from analysis import AnalysisConfig, open_analysis, resolve_heads, resolve_indices
from data import Batch, corrupt
from measures import ROLE_RULE, masked_mse
from model import MatrixBert
from modeling_bert import act_name, patch_hooks, patch_z_hooks
from utils.config import UserError, cli, opt, repo_relative
from utils.floats import finite_or_none, to_floats
from utils.plots import plot_style, pyplot, save_figure, text_colour
from utils.results import Table, prepare_output, write_results

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SITES = ("resid_pre", "z")
ENTRIES = ("hidden", "observed")
MIN_GAP = 0.01  # restored is reported only where L_clean < (1 − MIN_GAP) · L_corr

# An intervention turns the clean run's cache into hooks for the corrupted run.
Intervention = Callable[[dict], list]


@dataclass
class PatchSection:
    layers: list[int] | None = opt([-1], "layers whose z is patched; null: all; −1: the last")
    heads: list[int] | str | None = opt(
        None,
        "heads patched in those layers; null: all; or a role (row, column, self, row+column): "
        "this model's heads with that role in those layers",
    )
    positions: list[int] | None = opt(None, "positions (row-major i·n + j) patched; null: all")
    head_sweep: bool = opt(True, "also patch every (layer, head) alone")
    position_sweep: bool = opt(True, "also patch every (layer, position) alone")
    position_site: str = opt("resid_pre", "what the position sweep patches", SITES)
    sweep_entries: str = opt(
        "hidden", "entries the sweeps' share restored is measured at (observed: copying)", ENTRIES
    )


@dataclass
class Config(AnalysisConfig):
    script = "patch"  # outputs: results/<run folder name>/patch

    patch: PatchSection = field(default_factory=PatchSection)


# ----------------------------------------------------------------------------------------------


def restored_fraction(l_corr: float, l_patched: float, l_clean: float) -> float | None:
    """Share of the clean–corrupted loss gap the patch closes; None when the clean run does not
    beat the corrupted one by MIN_GAP of its loss (the share would be noise over a tiny gap)."""
    gap = l_corr - l_clean
    return None if gap <= MIN_GAP * l_corr else (l_corr - l_patched) / gap


def cache_names(layers: int) -> list[str]:
    """What the clean run caches: z and the layer input at every layer, the embedding output."""
    names = [act_name("embed")]
    for i in range(layers):
        names += [act_name("z", i), act_name("resid_pre", i)]
    return names


@torch.no_grad()
def patched_predictions(
    model: MatrixBert, pairs: list[tuple[Batch, Batch]], interventions: dict[str, Intervention]
) -> dict[str, torch.Tensor]:
    """Predictions [N, T] of the clean run, the corrupted run and the corrupted run under each
    intervention (each fed the clean cache of the same batch)."""
    names = cache_names(model.config.num_hidden_layers)
    out: dict[str, list] = {"clean": [], "corrupted": [], **{k: [] for k in interventions}}
    for clean, corr in pairs:
        pred, cache = model.run_with_cache(clean.input_ids, names)
        out["clean"].append(pred)
        out["corrupted"].append(model(corr.input_ids))
        for key, make_hooks in interventions.items():
            with model.hooks(make_hooks(cache)):
                out[key].append(model(corr.input_ids))
    return {k: torch.cat(v) for k, v in out.items()}


def score(preds: dict[str, torch.Tensor], target: torch.Tensor, observed: torch.Tensor) -> dict:
    """Per run: MSE against X and −X at observed and hidden entries, and the share of the
    clean–corrupted gap restored at each."""
    rows = {}
    for key, pred in preds.items():
        vs_x = to_floats(masked_mse(pred, target, observed))
        vs_neg = to_floats(masked_mse(pred, -target, observed))
        rows[key] = {
            "x_observed": vs_x["loss_obs"],
            "x_hidden": vs_x["loss_mask"],
            "neg_x_observed": vs_neg["loss_obs"],
            "neg_x_hidden": vs_neg["loss_mask"],
        }
    for entries in ENTRIES:
        l_clean, l_corr = rows["clean"][f"x_{entries}"], rows["corrupted"][f"x_{entries}"]
        for row in rows.values():
            row[f"restored_{entries}"] = restored_fraction(l_corr, row[f"x_{entries}"], l_clean)
    return rows


def chosen_patch(cfg: PatchSection, model: MatrixBert, t: int, batches: list[Batch]) -> dict:
    """The main patch's layers, heads and positions, checked (None = all heads / positions).
    Heads named by role are resolved on `batches` (analysis.resolve_heads) into `pairs`, the
    (layer, head) pairs of that role within the chosen layers."""
    c = model.config
    layers = resolve_indices(cfg.layers, c.num_hidden_layers, "patch.layers")
    layers = list(range(c.num_hidden_layers)) if layers is None else layers
    positions = resolve_indices(cfg.positions, t, "patch.positions")
    if isinstance(cfg.heads, str):
        pairs, how = resolve_heads(cfg.heads, model, batches, "patch.heads")
        pairs = [[i, h] for i, h in pairs if i in layers]
        if not pairs:
            raise UserError(f"'patch.heads' = {cfg.heads!r}: none in 'patch.layers' {layers}")
        return {"layers": layers, "heads": cfg.heads, "pairs": pairs, "positions": positions}
    heads = resolve_indices(cfg.heads, c.num_attention_heads, "patch.heads")
    return {"layers": layers, "heads": heads, "positions": positions}


def main_patch_hooks(cache: dict, chosen: dict) -> list:
    """Hooks of the main patch: layers × heads × positions, or the role's (layer, head) pairs."""
    if "pairs" not in chosen:
        return patch_z_hooks(cache, chosen["layers"], chosen["heads"], chosen["positions"])
    hooks = []
    for layer in sorted({i for i, _ in chosen["pairs"]}):
        heads = [h for i, h in chosen["pairs"] if i == layer]
        hooks += patch_z_hooks(cache, [layer], heads, chosen["positions"])
    return hooks


def interventions_for(
    cfg: PatchSection, chosen: dict, model: MatrixBert, t: int
) -> dict[str, Intervention]:
    """The main patch plus the sweeps, keyed `patched`, `head L H` and `position L P`."""
    c = model.config
    out: dict[str, Intervention] = {"patched": lambda cache: main_patch_hooks(cache, chosen)}
    if cfg.head_sweep:
        for i in range(c.num_hidden_layers):
            for h in range(c.num_attention_heads):
                out[f"head {i} {h}"] = lambda cache, i=i, h=h: patch_z_hooks(cache, [i], [h])
    if cfg.position_sweep:
        for i in range(c.num_hidden_layers):
            for p in range(t):
                if cfg.position_site == "z":
                    fn = lambda cache, i=i, p=p: patch_z_hooks(cache, [i], None, [p])
                else:
                    fn = lambda cache, i=i, p=p: patch_hooks(cache, [act_name("resid_pre", i)], [p])
                out[f"position {i} {p}"] = fn
    return out


def sweep_grid(
    rows: dict, kind: str, shape: tuple[int, int], entries: str
) -> list[list[float | None]]:
    """The share restored at `entries` in a sweep, as a [layers][heads or positions] grid."""
    key = f"restored_{entries}"
    return [[rows[f"{kind} {i} {j}"][key] for j in range(shape[1])] for i in range(shape[0])]


def best_cell(grid: list[list[float | None]]) -> tuple[float, int, int] | None:
    """(value, layer, index) of the largest share restored in a sweep grid."""
    cells = [(v, i, j) for i, row in enumerate(grid) for j, v in enumerate(row) if v is not None]
    return max(cells, default=None)


NOT_APPLICABLE = "n/a: the clean run does not beat the corrupted one"


def plot_sweep(
    grid: list[list[float | None]],
    xlabel: str,
    first_x: int,
    title: str,
    entries: str,
    row_len: int | None = None,
) -> Figure:
    """Heatmap of the share restored, layers 1-based on the y axis, x ticks from `first_x`.

    The colour scale is symmetric about 0 (white) and spans the largest |share| in the grid, so
    the small shares after the drop stay visible; a grid of None (no gap to restore, as before
    the drop) is drawn empty with NOT_APPLICABLE written on it. `row_len` (n, for positions)
    draws a line between the matrix's rows."""
    plt = pyplot()

    values = np.array([[np.nan if v is None else v for v in row] for row in grid], dtype=float)
    layers, cols = values.shape
    finite = np.abs(values[np.isfinite(values)])
    lim = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    with plt.rc_context({**plot_style(), "axes.grid": False}):
        fig, ax = plt.subplots(
            figsize=(max(6.5, 0.25 * cols + 3.0), max(3.6, 0.6 * layers + 2.0)),
            layout="constrained",
        )
        ax.set_yticks(range(layers), [str(i + 1) for i in range(layers)])
        ax.set_xticks(range(cols), [str(j + first_x) for j in range(cols)])
        ax.tick_params(axis="x", labelsize=8 if cols > 16 else 10)
        ax.set(xlabel=xlabel, ylabel="layer (1-based)", title=title)
        if not finite.size:
            ax.set(xlim=(-0.5, cols - 0.5), ylim=(layers - 0.5, -0.5))
            why = f"(by {MIN_GAP:.0%} of its MSE at {entries} entries): nothing to restore"
            ax.text(
                0.5,
                0.5,
                f"{NOT_APPLICABLE}\n{why}",
                transform=ax.transAxes,
                ha="center",
                va="center",
                fontsize=11,
                bbox={"fc": "white", "ec": "0.6"},
            )
            return fig
        im = ax.imshow(values, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
        if cols <= 16:
            decimals = max(2, 1 - int(np.floor(np.log10(lim))))  # 2 digits for the largest
            for i in range(layers):
                for j in range(cols):
                    if np.isfinite(values[i, j]):
                        color = text_colour(im.cmap(im.norm(values[i, j])))
                        ax.text(
                            j,
                            i,
                            f"{values[i, j]:.{decimals}f}".replace("-", "−"),
                            ha="center",
                            va="center",
                            fontsize=8,
                            color=color,
                        )
        for k in range(row_len or cols, cols, row_len or cols):
            ax.axvline(k - 0.5, color="0.3", lw=0.8)
        label = f"share restored at {entries} entries\n(scale ± largest |share| = {lim:.2g})"
        fig.colorbar(im, ax=ax, label=label)
    return fig


def draw_figures(summary: dict, out_dir: Path) -> tuple[list[Path], list[str]]:
    """patch_heads.png and patch_positions.png (the sweeps that ran) from summary.json's numbers
    alone (scripts/redraw.py uses it too). Returns the files written and what was not drawn."""
    plt = pyplot()

    step, entries = summary["step"], summary.get("sweep_entries", "hidden")
    figures = {}
    if "head_sweep" in summary:
        title = f"Patching one head's z, X run into −X run\n(step {step}; layers and heads 1-based)"
        figures["patch_heads"] = plot_sweep(
            summary["head_sweep"], "head (1-based)", 1, title, entries
        )
    if "position_sweep" in summary:
        site = summary.get("position_site", "resid_pre")
        where = "the layer input (resid_pre)" if site == "resid_pre" else "all heads' z"
        m, n = summary.get("m"), summary.get("n")
        shape = f" of the {m}×{n} matrix; lines between its rows" if m and n else ""
        title = (
            f"Patching {where} at one position, X run into −X run\n"
            f"(step {step}; layers 1-based, positions 0-based)"
        )
        xlabel = f"position i·n + j{shape} (0-based, as in the config)"
        figures["patch_positions"] = plot_sweep(
            summary["position_sweep"], xlabel, 0, title, entries, row_len=n
        )
    paths = []
    for stem, fig in figures.items():
        paths += save_figure(fig, out_dir, stem)
        plt.close(fig)
    return paths, []


def main(cfg: Config) -> dict:
    run = open_analysis(cfg, one_size=True)  # the sweeps index the positions of an m×n matrix
    model, ckpt, data_cfg = run.model, run.ckpt, run.data
    m, n = data_cfg.m, data_cfg.n
    batches = run.batches()
    chosen = chosen_patch(cfg.patch, model, m * n, batches)
    out_dir = prepare_output(cfg.out_dir, cfg)
    pairs = [(clean, corrupt(clean, data_cfg)) for clean in batches]
    preds = patched_predictions(model, pairs, interventions_for(cfg.patch, chosen, model, m * n))
    target = torch.cat([clean.target for clean, _ in pairs])
    observed = torch.cat([clean.observed for clean, _ in pairs])
    rows = score(preds, target, observed)
    rows = {k: {c: finite_or_none(v) for c, v in r.items()} for k, r in rows.items()}

    layers, heads = model.config.num_hidden_layers, model.config.num_attention_heads
    step = ckpt.get("step")
    summary: dict = {
        "step": step,
        "patched": chosen,
        "runs": {k: rows[k] for k in ("clean", "corrupted", "patched")},
        "restored": "(L_corr − L_patched) / (L_corr − L_clean), L = MSE against X at those "
        f"entries; null where L_clean is not below (1 − {MIN_GAP}) · L_corr",
    }
    columns = ["run", "x_observed", "x_hidden", "neg_x_observed", "neg_x_hidden"]
    columns += [f"restored_{e}" for e in ENTRIES]
    table = Table([{"run": k, **v} for k, v in summary["runs"].items()], columns)
    what = (
        f"step {step}: MSE against X (x_) and against −X (neg_x_) at observed and hidden entries; "
        f"`patched`: input −X, clean z patched in at layers {chosen['layers']}, heads "
        + (
            f"{chosen['heads']} ({ROLE_RULE}): [layer, head] {chosen['pairs']}"
            if "pairs" in chosen
            else f"{chosen['heads'] or 'all'}"
        )
        + f", positions {chosen['positions'] or 'all'} (0-based); "
        "`restored_*`: share of the clean–corrupted gap closed at those entries"
    )
    print(what + "\n" + table.markdown())
    document = [what + ".", table]
    entries = cfg.patch.sweep_entries
    sweeps = {}
    if cfg.patch.head_sweep:
        sweeps["head_sweep"] = sweep_grid(rows, "head", (layers, heads), entries)
    if cfg.patch.position_sweep:
        sweeps["position_sweep"] = sweep_grid(rows, "position", (layers, m * n), entries)
        summary.update(position_site=cfg.patch.position_site, m=m, n=n)
    if sweeps:
        summary["sweep_entries"] = entries
    summary.update(sweeps)
    draw_figures(summary, out_dir)
    for key, grid in sweeps.items():
        best = best_cell(grid)
        if best is None:
            line = f"{key}: no clean–corrupted gap at {entries} entries, nothing to restore"
        else:
            line = (
                f"{key}: most restored at {entries} entries {best[0]:.3f}, layer {best[1]}, "
                f"index {best[2]} (0-based)"
            )
        print(line)
        document.append(line)
    write_results(out_dir, summary, {"patch.md": document}, cfg, "patch")
    print(f"outputs in {repo_relative(out_dir)}")
    return summary


if __name__ == "__main__":
    cli(main, Config, __doc__, "configs/patch.yaml", redraw=draw_figures)
