"""Head ablation: how much worse the model completes matrices without some attention heads.

    python3 uniform_ablation.py --config configs/uniform_ablation.yaml
    python3 uniform_ablation.py --config configs/uniform_ablation.yaml --ablation.method=zero

The authors' src/uniform_ablation.py. The heads in `ablation.heads`
([layer, head] pairs, 0-based; the default is the authors' published choice for the 4 × 8 paper
model: layer 3 head 3, and heads 2, 5, 6, 7 of layer 4, 1-based) are ablated together through
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

from dataclasses import dataclass, field
from pathlib import Path

import utils
from data import MatrixSampler
from model import analysis_data_config, evaluate, load_from_section
from modeling_bert import ABLATIONS, ablate_head_hooks, check_heads
from utils import LOSSES, AnalysisData, CkptSection, opt


@dataclass
class AblationSection:
    heads: list[list[int]] = opt(
        [[2, 2], [3, 1], [3, 4], [3, 5], [3, 6]],
        "[layer, head] pairs ablated together, 0-based (default: the authors' choice)",
    )
    method: str = opt("mean", "mean / uniform attention pattern, or zero output", ABLATIONS)
    sweep: bool = opt(True, "also ablate every single head alone")


@dataclass
class Config:
    seed: int = opt(0, "seed for the sampled matrices")
    device: str = opt("auto", "auto (cuda, mps, cpu) or a torch device name")
    out_dir: str = opt(
        "results/uniform_ablation", "output folder; relative paths from the repo root"
    )
    ckpt: CkptSection = field(default_factory=CkptSection)
    data: AnalysisData = field(default_factory=AnalysisData)
    ablation: AblationSection = field(default_factory=AblationSection)


def plot_sweep(grid: dict, baseline: dict, method: str, title: str, out_dir: Path) -> list[Path]:
    """Hidden- and observed-entry MSE with each single head ablated (layers, heads 1-based)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    panels = (("loss_mask", "hidden entries"), ("loss_obs", "observed entries"))
    with plt.rc_context({**utils.plot_style(), "axes.grid": False}):
        layers, heads = len(grid["loss_mask"]), len(grid["loss_mask"][0])
        fig, axes = plt.subplots(1, 2, figsize=(2 * (0.55 * heads + 2.2), 0.55 * layers + 1.8))
        for ax, (key, label) in zip(axes, panels):
            values = np.array(grid[key], dtype=float)
            im = ax.imshow(values, cmap="viridis", aspect="auto")
            ax.set_xticks(range(heads), [str(h + 1) for h in range(heads)])
            ax.set_yticks(range(layers), [str(i + 1) for i in range(layers)])
            for i in range(layers):
                for h in range(heads):
                    ax.text(h, i, f"{values[i, h]:.3g}", ha="center", va="center", fontsize=6)
            ax.set(xlabel="head", ylabel="layer")
            ax.set_title(f"MSE at {label}\n(no ablation: {baseline[key]:.3g})", fontsize=9)
            fig.colorbar(im, ax=ax, format="%.4g")
        fig.suptitle(f"{title}: one head ablated ({method}); layers and heads 1-based", fontsize=9)
        fig.tight_layout()
        paths = utils.save_figure(fig, out_dir, "ablation_sweep")
        plt.close(fig)
    return paths


def main(cfg: Config) -> dict:
    device = utils.choose_device(cfg.device)
    model, ckpt = load_from_section(cfg.ckpt, device)
    heads = check_heads(cfg.ablation.heads, model.config, "ablation.heads")
    data_cfg = analysis_data_config(ckpt, cfg.data, model)
    out_dir = utils.prepare_output(cfg.out_dir, cfg)
    utils.seed_everything(cfg.seed)
    sampler = MatrixSampler(data_cfg, device, seed=cfg.seed)
    batches = sampler.sample_many(
        cfg.data.num_samples, cfg.data.batch_size, m=data_cfg.m, n=data_cfg.n
    )
    method = cfg.ablation.method
    baseline = evaluate(model, batches)
    ablated = evaluate(model, batches, ablate_head_hooks(heads, method))
    step = ckpt.get("step")
    summary: dict = {
        "step": step,
        "method": method,
        "heads": [list(h) for h in heads],
        "no_ablation": baseline,
        "ablated": ablated,
    }
    rows = [{"model": "no ablation", **baseline}, {"model": f"{method} ablation", **ablated}]
    table = utils.markdown_table(rows, ["model", *LOSSES])
    what = (
        f"step {step}: MSE over all (loss), observed (loss_obs) and hidden (loss_mask) entries; "
        f"heads ablated together ([layer, head], 0-based): {summary['heads']}"
    )
    print(what + "\n" + table)
    text = what + ".\n\n" + table
    if cfg.ablation.sweep:
        c = model.config
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
        plot_sweep(grid, baseline, method, f"step {step}", out_dir)
        worst = sorted(single.items(), key=lambda kv: -(kv[1]["loss_mask"] or 0.0))[:5]
        sweep_rows = [{"layer": i, "head": h, **v} for (i, h), v in worst]
        sweep_table = utils.markdown_table(sweep_rows, ["layer", "head", *LOSSES])
        head = "single heads whose ablation hurts hidden entries most (0-based)"
        print(head + "\n" + sweep_table)
        text += f"\n{head}:\n\n{sweep_table}"
    utils.write_results(out_dir, summary, {"ablation.md": text})
    print(f"outputs in {out_dir}")
    return summary


if __name__ == "__main__":
    utils.cli(main, Config, __doc__, "configs/uniform_ablation.yaml")
