"""The trained BERT against nuclear-norm minimisation as more entries are hidden (paper Fig. 3).

    python3 compare_nuc_bert.py --config configs/compare_nuc_bert.yaml
    python3 compare_nuc_bert.py --config configs/compare_nuc_bert.yaml --compare.solver=CLARABEL

For each p_mask of `compare.p_masks` (the paper: 0.10 to 0.60 by 0.05, 512 matrices each) it
draws matrices like the checkpoint's training data, fills them in with the BERT and with the exact
nuclear-norm minimiser (min ‖X‖* subject to agreeing on the observed entries; nuclear_norm.py) on
the same matrices, and reports the MSE of each over all, observed and hidden entries, and the mean
nuclear norm of the BERT's predicted matrix, of the minimiser and of the true matrix. The paper
finds the BERT's MSE below the minimiser's at the training p_mask.
Writes config.yaml, summary.json (every number, and the solver's time), table.md and
compare_nuc_bert.png/.pdf (MSE on a log scale and the nuclear norm against p_mask, the
training p_mask marked).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from analysis import AnalysisConfig, open_analysis
from measures import predict
from nuclear_norm import SOLVERS, compare_with
from utils.config import UserError, cli, opt, repo_relative
from utils.plots import plot_style, pyplot, save_figure
from utils.results import Table, prepare_output, write_results

if TYPE_CHECKING:
    from matplotlib.figure import Figure

P_MASKS = [round(0.10 + 0.05 * i, 2) for i in range(11)]


@dataclass
class CompareSection:
    p_masks: list[float] = opt(P_MASKS, "probabilities of hiding an entry, one point each")
    solver: str = opt("ipm", "nuclear-norm solver: ipm (batched, ours) or a cvxpy one", SOLVERS)

    def __post_init__(self) -> None:
        if not self.p_masks or any(not 0.0 <= p < 1.0 for p in self.p_masks):
            raise UserError(f"'compare.p_masks' must be values in [0, 1), got {self.p_masks}")


@dataclass
class CompareConfig(AnalysisConfig):
    script = "compare_nuc_bert"  # outputs: results/<run folder name>/compare_nuc_bert

    compare: CompareSection = field(default_factory=CompareSection)

    def __post_init__(self) -> None:
        if self.data.p_mask is not None:
            raise UserError("'data.p_mask' must be null here: the p_mask grid is 'compare.p_masks'")


def figure_title(summary: dict) -> str:
    """What the figure shows and on which checkpoint; the data's shape where it was saved."""
    shape = ""
    if all(k in summary for k in ("m", "n", "rank")):
        shape = f"{summary['m']}×{summary['n']} rank {summary['rank']}, "
    return (
        f"BERT (step {summary['step']}) vs nuclear-norm minimisation: "
        f"{shape}{summary['num_samples']} matrices per p_mask"
    )


def plot(summary: dict) -> Figure:
    """Two panels against p_mask: MSE over all and hidden entries (log scale) and the mean nuclear
    norm (linear: it spans a few percent); the checkpoint's training p_mask marked on both
    (where summary.json has it: runs before it was saved lack `train_p_mask`)."""
    plt = pyplot()

    rows = summary["rows"]
    p = [r["p_mask"] for r in rows]
    train_p = summary.get("train_p_mask")
    with plt.rc_context(plot_style()):
        fig, (ax_mse, ax_norm) = plt.subplots(1, 2, figsize=(11, 4.4), layout="constrained")
        for who, label, color in (("bert", "BERT", "C0"), ("nuc", "nuclear-norm min.", "C3")):
            ax_mse.plot(p, [r[f"{who}_loss"] for r in rows], "o-", color=color, label=label)
            ax_mse.plot(
                p,
                [r[f"{who}_loss_mask"] for r in rows],
                "o--",
                color=color,
                alpha=0.6,
                label=f"{label}, hidden entries",
            )
            ax_norm.plot(p, [r[f"{who}_norm"] for r in rows], "o-", color=color, label=label)
        ax_norm.plot(p, [r["true_norm"] for r in rows], ":", color="0.4", label="true matrix")
        for ax in (ax_mse, ax_norm):
            if train_p is not None:
                label = f"training p_mask ({train_p:g})"
                ax.axvline(train_p, color="0.2", ls="--", lw=1, label=label)
            ax.set_xlabel("p_mask (probability an entry is hidden)")
            ax.legend(fontsize=9)
        ax_mse.set(ylabel="MSE", yscale="log", title="MSE (solid: all entries; dashed: hidden)")
        ax_norm.set(ylabel="mean nuclear norm of the matrix", title="nuclear norm (linear axis)")
        fig.suptitle(figure_title(summary))
    return fig


def draw_figures(summary: dict, out_dir: Path) -> tuple[list[Path], list[str]]:
    """compare_nuc_bert.png/.pdf from summary.json's numbers alone (scripts/redraw.py uses it too).
    Returns the files written and, per figure drawn without some of its numbers, what is missing."""
    plt = pyplot()

    missing = []
    if summary.get("train_p_mask") is None:
        missing.append("compare_nuc_bert.png: no training-p_mask marker (train_p_mask not saved)")
    fig = plot(summary)
    paths = save_figure(fig, out_dir, "compare_nuc_bert", pdf=True)
    plt.close(fig)
    return paths, missing


def main(cfg: CompareConfig) -> dict:
    run = open_analysis(cfg, sampler_device="cpu")
    model, ckpt, data_cfg, device = run.model, run.ckpt, run.data, run.device
    out_dir = prepare_output(cfg.out_dir, cfg)
    rows = []
    for p_mask in cfg.compare.p_masks:
        batch = run.sampler.sample(cfg.data.num_samples, p_mask=p_mask)
        rows.append(
            {
                "p_mask": p_mask,
                **compare_with(
                    predict(model, batch.input_ids, cfg.data.batch_size, device),
                    batch,
                    cfg.compare.solver,
                ),
            }
        )
    step = ckpt.get("step")
    summary = {
        "step": step,
        "m": data_cfg.m,
        "n": data_cfg.n,
        "rank": data_cfg.rank,
        "train_p_mask": data_cfg.p_mask,
        "num_samples": cfg.data.num_samples,
        "solver": cfg.compare.solver,
        "num_problems": cfg.data.num_samples * len(rows),
        "solver_wall_s": sum(r["solver_wall_s"] for r in rows),
        "solver_cpu_s": sum(r["solver_cpu_s"] for r in rows),
        "unsolved": sum(r["unsolved"] for r in rows),
        "rows": rows,
    }
    summary["figures"] = [p.name for p in draw_figures(summary, out_dir)[0]]
    title = figure_title(summary)
    columns = ["p_mask", "bert_loss", "nuc_loss", "bert_loss_obs", "nuc_loss_obs"]
    columns += ["bert_loss_mask", "nuc_loss_mask", "bert_norm", "nuc_norm", "true_norm", "unsolved"]
    table = Table(rows, columns)
    write_results(out_dir, summary, {"table.md": [table]}, cfg, "compare_nuc_bert")
    print(title)
    print(table.markdown(), end="")
    print(
        f"solver {cfg.compare.solver}: {summary['num_problems']} problems in "
        f"{summary['solver_wall_s']:.1f} s ({summary['solver_cpu_s']:.1f} s CPU), "
        f"{summary['unsolved']} unsolved; outputs in {repo_relative(out_dir)}"
    )
    return summary


if __name__ == "__main__":
    cli(main, CompareConfig, __doc__, "configs/compare_nuc_bert.yaml", redraw=draw_figures)
