"""Head ablation: how much worse the model completes matrices without some attention heads.

    python3 uniform_ablation.py --config configs/uniform_ablation.yaml
    python3 uniform_ablation.py --config configs/uniform_ablation.yaml --ablation.method=zero

    python3 uniform_ablation.py --config configs/uniform_ablation.yaml --ablation.heads=row+column

The authors' src/uniform_ablation.py. The heads in `ablation.heads` are ablated together:
[layer, head] pairs, 0-based (the default is the authors' published choice for *their* trained
4 × 8 model: layer 3 head 3, and heads 2, 5, 6, 7 of layer 4, 1-based; heads are interchangeable
at initialisation, so in another run these indices are arbitrary heads), or a role (row, column,
self, row+column): this checkpoint's own heads with that role by measures.ROLE_RULE, measured on the
script's matrices; the summary says which indices that resolved to. Beside them,
`ablation.controls` random sets of as many other heads are ablated, so that a loss rise can be
compared with what ablating arbitrary heads does. Ablation goes through
`modeling_bert.ablate_head_hooks`, by one of three methods:
    mean     each ablated head's attention pattern is replaced by its mean over the forward batch
             (`data.batch_size` matrices; keep it equal to `data.num_samples` for one mean over
             all), so the head no longer depends on the input through its pattern. This is what
             the authors' script does: it passes a `head_mask` whose zeros their modified BERT
             reads as "replace this head's pattern by its batch mean";
    uniform  the pattern is replaced by 1/T everywhere (every position attends to all equally);
    zero     the head's output z is set to 0 (what an unmodified HF `head_mask` would do).
Reported: MSE over all, observed and hidden entries with and without the ablation, and (with
`ablation.sweep`) the same for every single head ablated alone, drawn as a layers × heads heatmap.

Writes to `out_dir`: ablation.md, ablation_sweep.png (layers and heads 1-based on the figure),
summary.json and config.yaml.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from analysis import AnalysisConfig, open_analysis, resolve_heads
from measures import LOSSES, ROLE_RULE, evaluate
from modeling_bert import ABLATIONS, ablate_head_hooks
from utils.config import UserError, cli, opt, repo_relative
from utils.plots import plot_style, pyplot, save_figure, text_colour
from utils.results import Table, prepare_output, write_results

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass
class AblationSection:
    heads: list[list[int]] | str = opt(
        [[2, 2], [3, 1], [3, 4], [3, 5], [3, 6]],
        "[layer, head] pairs ablated together, 0-based (default: the authors' choice for their "
        "model), or this model's heads by role: row, column, self or row+column",
    )
    method: str = opt("mean", "mean / uniform attention pattern, or zero output", ABLATIONS)
    sweep: bool = opt(True, "also ablate every single head alone")
    controls: int = opt(
        5, "also ablate this many random sets of as many other heads (the comparison); 0: none"
    )

    def __post_init__(self) -> None:
        if self.controls < 0:
            raise UserError(f"'ablation.controls' must be ≥ 0, got {self.controls}")


@dataclass
class Config(AnalysisConfig):
    script = "uniform_ablation"  # outputs: results/<run folder name>/uniform_ablation

    ablation: AblationSection = field(default_factory=AblationSection)


def percent_change(values: list[list[float | None]], base: float | None) -> np.ndarray:
    """100 · (ablated − no ablation) / no ablation, per cell; NaN where undefined."""
    grid = np.array([[np.nan if v is None else v for v in row] for row in values], dtype=float)
    if base is None or base == 0:
        return np.full_like(grid, np.nan)
    return 100.0 * (grid - base) / base


def _decimals(largest: float) -> int:
    """Decimals that give the panel's largest |change| 3 significant digits (at least 0)."""
    return max(0, 2 - int(np.floor(np.log10(largest)))) if largest > 0 else 1


def plot_sweep(summary: dict) -> Figure:
    """One heatmap per loss (hidden, observed entries): the change in MSE, in % of the MSE with no
    ablation, when each single head is ablated; diverging colours, 0 white, ±the largest change.
    Layers and heads 1-based on the figure."""
    plt = pyplot()

    grid, baseline = summary["sweep"], summary["no_ablation"]
    panels = (("loss_mask", "hidden entries"), ("loss_obs", "observed entries"))
    layers, heads = len(grid["loss_mask"]), len(grid["loss_mask"][0])
    with plt.rc_context({**plot_style(), "axes.grid": False}):
        fig, axes = plt.subplots(
            1, 2, figsize=(2 * (0.75 * heads + 2.4), 0.65 * layers + 2.2), layout="constrained"
        )
        for ax, (key, label) in zip(axes, panels):
            change = percent_change(grid[key], baseline[key])
            finite = change[np.isfinite(change)]
            largest = float(np.abs(finite).max()) if finite.size else 0.0
            lim, decimals = largest or 1.0, _decimals(largest)
            im = ax.imshow(change, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
            ax.set_xticks(range(heads), [str(h + 1) for h in range(heads)])
            ax.set_yticks(range(layers), [str(i + 1) for i in range(layers)])
            for i in range(layers):
                for h in range(heads):
                    if np.isfinite(change[i, h]):
                        color = text_colour(im.cmap(im.norm(change[i, h])))
                        text = f"{change[i, h]:+.{decimals}f}".replace("-", "−")
                        ax.text(h, i, text, ha="center", va="center", fontsize=8, color=color)
            ax.set(xlabel="head (1-based)", ylabel="layer (1-based)")
            base = baseline[key]
            base_text = "n/a" if base is None else f"{base:.3g}"
            ax.set_title(f"{label}: MSE with no ablation {base_text}")
            fig.colorbar(im, ax=ax, label="change in MSE vs no ablation (%)")
        fig.suptitle(
            f"Ablating one head at a time ({summary['method']} ablation), step {summary['step']}: "
            "change in MSE (red: worse)"
        )
    return fig


def draw_figures(summary: dict, out_dir: Path) -> tuple[list[Path], list[str]]:
    """ablation_sweep.png from summary.json's numbers alone (scripts/redraw.py uses it too).
    Returns the files written and what could not be drawn."""
    plt = pyplot()

    if "sweep" not in summary:
        return [], ["ablation_sweep.png: no sweep in summary.json (ablation.sweep was false)"]
    fig = plot_sweep(summary)
    paths = save_figure(fig, out_dir, "ablation_sweep")
    plt.close(fig)
    return paths, []


def control_sets(
    chosen: list[tuple[int, int]], layers: int, heads: int, count: int, seed: int
) -> list[list[tuple[int, int]]]:
    """`count` different random sets of len(chosen) heads drawn from the heads not in `chosen`
    (seeded): what ablating arbitrary heads does, beside ablating the chosen ones. When fewer
    different sets exist than `count`, all of them (each once)."""
    others = [(i, h) for i in range(layers) for h in range(heads) if (i, h) not in chosen]
    k = len(chosen)
    if not chosen or len(others) < k or count < 1:
        return []
    if math.comb(len(others), k) <= count:
        return [list(c) for c in itertools.combinations(others, k)]
    g = torch.Generator().manual_seed(seed)
    sets: list[list[tuple[int, int]]] = []
    while len(sets) < count:
        pick = sorted(others[j] for j in torch.randperm(len(others), generator=g)[:k].tolist())
        if pick not in sets:  # a repeated draw would be a control counted twice
            sets.append(pick)
    return sets


def main(cfg: Config) -> dict:
    run = open_analysis(cfg)
    model, ckpt = run.model, run.ckpt
    batches = run.batches()
    heads, chosen_by = resolve_heads(cfg.ablation.heads, model, batches, "ablation.heads")
    out_dir = prepare_output(cfg.out_dir, cfg)
    method = cfg.ablation.method
    c = model.config
    baseline = evaluate(model, batches)
    ablated = evaluate(model, batches, ablate_head_hooks(heads, method))
    step = ckpt.get("step")
    summary: dict = {
        "step": step,
        "method": method,
        "heads": [list(h) for h in heads],
        "heads_chosen_by": chosen_by,
        "no_ablation": baseline,
        "ablated": ablated,
    }
    rows = [{"model": "no ablation", **baseline}, {"model": f"{method} ablation", **ablated}]
    controls = control_sets(
        heads, c.num_hidden_layers, c.num_attention_heads, cfg.ablation.controls, cfg.seed
    )
    if controls:
        runs = [evaluate(model, batches, ablate_head_hooks(h, method)) for h in controls]
        summary["controls"] = [
            {"heads": [list(h) for h in hs], **r} for hs, r in zip(controls, runs)
        ]
        for i, r in enumerate(runs):
            rows.append({"model": f"control {i + 1}: {len(heads)} other heads", **r})
    table = Table(rows, ["model", *LOSSES])
    how = (
        f"this model's {chosen_by['by_role']} heads ({ROLE_RULE})"
        if chosen_by["by_role"]
        else "as configured"
    )
    what = (
        f"step {step}: MSE over all (loss), observed (loss_obs) and hidden (loss_mask) entries; "
        f"heads ablated together ([layer, head], 0-based), {how}: {summary['heads']}"
        + ("; controls: as many heads drawn at random from the others" if controls else "")
    )
    print(what + "\n" + table.markdown())
    document = [what + ".", table]
    if cfg.ablation.sweep:
        single = {
            (i, h): evaluate(model, batches, ablate_head_hooks([(i, h)], method))
            for i in range(c.num_hidden_layers)
            for h in range(c.num_attention_heads)
        }
        grid = {
            k: [
                [single[i, h][k] for h in range(c.num_attention_heads)]
                for i in range(c.num_hidden_layers)
            ]
            for k in LOSSES
        }
        summary["sweep"] = grid
        draw_figures(summary, out_dir)
        worst = sorted(single.items(), key=lambda kv: -(kv[1]["loss_mask"] or 0.0))[:5]
        sweep_rows = [{"layer": i, "head": h, **v} for (i, h), v in worst]
        sweep_table = Table(sweep_rows, ["layer", "head", *LOSSES])
        head = "single heads whose ablation hurts hidden entries most (0-based)"
        print(head + "\n" + sweep_table.markdown())
        document += [head + ":", sweep_table]
    write_results(out_dir, summary, {"ablation.md": document}, cfg, "uniform_ablation")
    print(f"outputs in {repo_relative(out_dir)}")
    return summary


if __name__ == "__main__":
    cli(main, Config, __doc__, "configs/uniform_ablation.yaml", redraw=draw_figures)
