"""The trained model on inputs it was not trained on, against nuclear-norm minimisation (Fig. 19).

    python3 ood.py --config configs/ood.yaml
    python3 ood.py --config configs/ood.yaml --ood.rows=[] --ood.cols=[]   # two sweeps only

Four sweeps, each changing one thing about the matrices of `data` (by default the checkpoint's
training data) and keeping the rest:
  - distribution: the factor distribution of U and V (`ood.distributions`: 'uniform', or
    'gaussian:s' / 'laplace:s' with s the std / scale; the authors' distribution test);
  - rank (`ood.ranks`), number of rows (`ood.rows`), number of columns (`ood.cols`).
For each point it reports the MSE over all, observed and hidden entries of the BERT and of the
exact nuclear-norm minimiser (nuclear_norm.py) on the same matrices. The paper finds the BERT
close to the minimiser, except when the number of columns changes. A point the model cannot take
(more entries than its position table, a rank above min(m, n)) is skipped, and the output says
which and why. Matrices with an entry outside the vocabulary (heavy-tailed factors) are redrawn;
the fraction redrawn is reported.
Writes config.yaml, summary.json, tables.md and one figure per sweep (ood_<sweep>.png/.pdf).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch

from analysis import (
    AnalysisConfig,
    AnalysisData,
    analysis_data_config,
    open_analysis,
    trained_data_config,
)
from data import DISTRIBUTIONS, Batch, DataConfig, MatrixSampler, make_batch, round_values
from measures import predict
from nuclear_norm import SOLVERS, compare_with
from utils.config import DataRangeError, UserError, cli, opt, repo_relative
from utils.plots import plot_style, pyplot, save_figure
from utils.results import Document, Table, prepare_output, render, write_results

MAX_DRAWS = 100  # draw at most this many times the matrices needed before giving up


def parse_distribution(spec: str) -> tuple[str, float | None]:
    """'uniform' -> ('uniform', None); 'gaussian:0.5' -> ('gaussian', 0.5)."""
    name, sep, scale = spec.partition(":")
    if name not in DISTRIBUTIONS:
        raise UserError(
            f"'ood.distributions': unknown distribution '{name}' "
            f"(valid: {', '.join(DISTRIBUTIONS)})"
        )
    if name == "uniform":
        if sep:
            raise UserError(
                f"'ood.distributions': uniform takes no scale (its range is as trained), "
                f"got '{spec}'"
            )
        return name, None
    try:
        value = float(scale) if sep else None
    except ValueError:
        value = None
    if value is None or value <= 0:
        raise UserError(f"'ood.distributions': '{spec}' needs a positive scale, e.g. '{name}:1.0'")
    return name, value


@dataclass
class OodSection:
    distributions: list[str] = opt(
        ["uniform", "gaussian:0.5", "gaussian:1.0", "laplace:0.5", "laplace:1.0"],
        "factor distributions: 'uniform', 'gaussian:std' or 'laplace:scale'",
    )
    ranks: list[int] = opt([1, 2, 3, 4, 5, 6, 7], "ranks (empty: skip this sweep)")
    rows: list[int] = opt([3, 4, 5, 6, 7, 8, 9, 10, 11, 12], "numbers of rows (empty: skip)")
    cols: list[int] = opt([3, 4, 5, 6, 7, 8, 9, 10, 11, 12], "numbers of columns (empty: skip)")
    solver: str = opt("ipm", "nuclear-norm solver: ipm (batched, ours) or a cvxpy one", SOLVERS)

    def __post_init__(self) -> None:
        for spec in self.distributions:
            parse_distribution(spec)
        for name in ("ranks", "rows", "cols"):
            if any(v < 1 for v in getattr(self, name)):
                raise UserError(f"'ood.{name}' must hold positive integers")


@dataclass
class OodConfig(AnalysisConfig):
    script = "ood"  # outputs: results/<run folder name>/ood

    seed: int = opt(0, "seed of the sampled matrices (the same at every point)")
    ood: OodSection = field(default_factory=OodSection)


def sweep_points(ood: OodSection, base: AnalysisData) -> dict[str, list[tuple]]:
    """{sweep: [(label, the data section of that point)]}; each point changes one field."""
    points = {"distribution": []}
    for spec in ood.distributions:
        name, scale = parse_distribution(spec)
        label = name if scale is None else f"{name}:{scale:g}"
        section = dataclasses.replace(base, distribution=name, scale=scale)
        points["distribution"].append((label, section))
    points["rank"] = [(r, dataclasses.replace(base, rank=r)) for r in ood.ranks]
    points["rows"] = [(m, dataclasses.replace(base, m=m)) for m in ood.rows]
    points["cols"] = [(n, dataclasses.replace(base, n=n)) for n in ood.cols]
    return points


def draw_in_vocabulary(cfg: DataConfig, num: int, seed: int) -> tuple[Batch, float]:
    """`num` matrices of `cfg` whose entries all have a token (others are redrawn), and the
    fraction of draws that were redrawn."""
    sampler = MatrixSampler(cfg, "cpu", seed=seed)
    kept, drawn, have = [], 0, 0
    while have < num:
        if drawn >= MAX_DRAWS * num:
            raise DataRangeError(
                f"fewer than 1 in {MAX_DRAWS} {cfg.distribution} matrices (scale {cfg.scale}) fit "
                f"the vocabulary [{cfg.min_vocab}, {cfg.max_vocab}]; use a smaller scale"
            )
        values = round_values(sampler.sample_values(num, cfg.m, cfg.n, cfg.rank), cfg.prec)
        fits = ((values >= cfg.min_vocab) & (values <= cfg.max_vocab)).flatten(1).all(1)
        kept.append(values[fits])
        drawn, have = drawn + num, have + int(fits.sum())
    values = torch.cat(kept)[:num]
    observed = sampler.sample_observed(num, cfg.m, cfg.n, cfg.p_mask)
    return make_batch(values, observed, cfg), 1.0 - have / drawn


def run_sweep(model, ckpt, cfg: OodConfig, points: list[tuple], device) -> tuple[list, list]:
    """(rows for the points the model takes, skipped points with the reason)."""
    rows, skipped = [], []
    for label, section in points:
        try:
            data_cfg = analysis_data_config(ckpt, section, model)
        except UserError as e:
            skipped.append({"value": label, "reason": str(e)})
            continue
        batch, redrawn = draw_in_vocabulary(data_cfg, cfg.data.num_samples, cfg.seed)
        pred = predict(model, batch.input_ids, cfg.data.batch_size, device)
        row = compare_with(pred, batch, cfg.ood.solver)
        rows.append({"value": label, **row, "redrawn": redrawn})
    return rows, skipped


def trained_value(kind: str, trained: DataConfig) -> str | int:
    """The value a sweep's figure marks as 'as trained', spelled like the sweep's labels."""
    if kind == "distribution":
        d = trained.distribution
        return d if d == "uniform" else f"{d}:{trained.scale:g}"
    return {"rank": trained.rank, "rows": trained.m, "cols": trained.n}[kind]


def plot(kind: str, rows: list[dict], trained, out_dir: Path, title: str) -> list[Path]:
    """Three panels (all / observed / hidden entries): MSE of both methods along the sweep."""
    plt = pyplot()

    labels = [r["value"] for r in rows]
    categorical = kind == "distribution"
    x = list(range(len(rows))) if categorical else labels
    style = "o" if categorical else "o-"  # no lines between unordered categories
    panels = (("loss", "all entries"), ("loss_obs", "observed (nuc. min.: exact, 0)"))
    panels += (("loss_mask", "hidden entries"),)
    with plt.rc_context(plot_style()):
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), sharey=True, layout="constrained")
        for ax, (key, name) in zip(axes, panels):
            for who, label, color in (("bert", "BERT", "C0"), ("nuc", "nuclear-norm min.", "C3")):
                ax.plot(x, [r[f"{who}_{key}"] for r in rows], style, color=color, label=label)
            if trained in labels:
                at = x[labels.index(trained)]
                ax.axvline(at, color="0.5", ls="--", lw=0.8, label="as trained")
            ax.set(xlabel=kind, yscale="log", title=f"MSE, {name}")
            ax.set_xticks(x, labels, rotation=30 if categorical else 0)
        axes[0].set_ylabel("MSE")
        axes[0].legend(fontsize=8)
        fig.suptitle(title)
        paths = save_figure(fig, out_dir, f"ood_{kind}", pdf=True)
        plt.close(fig)
    return paths


def main(cfg: OodConfig) -> dict:
    run = open_analysis(cfg)
    model, ckpt, base, device = run.model, run.ckpt, run.data, run.device
    out_dir = prepare_output(cfg.out_dir, cfg)
    trained = trained_data_config(ckpt)
    step = ckpt.get("step")
    columns = ["value", "bert_loss", "nuc_loss", "bert_loss_obs", "nuc_loss_obs"]
    columns += ["bert_loss_mask", "nuc_loss_mask", "redrawn", "unsolved"]
    summary = {"step": step, "num_samples": cfg.data.num_samples, "sweeps": {}}
    document: Document = []
    for kind, points in sweep_points(cfg.ood, cfg.data).items():
        if not points:
            continue
        rows, skipped = run_sweep(model, ckpt, cfg, points, device)
        figures = []
        if rows:
            title = (
                f"step {step}, {kind} sweep; otherwise {base.m}×{base.n}, rank {base.rank}, "
                f"{base.distribution}, p_mask {base.p_mask}"
            )
            if skipped:
                values = ", ".join(str(s["value"]) for s in skipped)
                title += f"\nnot taken by the model: {kind} = {values} (why: tables.md)"
            figures = plot(kind, rows, trained_value(kind, trained), out_dir, title)
        summary["sweeps"][kind] = {
            "trained": trained_value(kind, trained),
            "rows": rows,
            "skipped": skipped,
            "figures": [p.name for p in figures],
        }
        document.append(f"## {kind} (trained: {trained_value(kind, trained)})")
        document.append(Table(rows, columns) if rows else "no point the model can take")
        if skipped:
            lines = [f"- skipped {kind} = {s['value']}: {s['reason']}" for s in skipped]
            document.append("\n".join(lines))
    write_results(out_dir, summary, {"tables.md": document}, cfg, "ood")
    print(f"step {step}, solver {cfg.ood.solver}, {cfg.data.num_samples} matrices per point\n")
    print(render(document) + f"\noutputs in {repo_relative(out_dir)}")
    return summary


if __name__ == "__main__":
    cli(main, OodConfig, __doc__, "configs/ood.yaml")
