"""Linear probes on the hidden states: what each layer knows about the matrix (paper Fig. 6).

    python3 probe.py --config configs/probe.yaml
    python3 probe.py --config configs/probe.yaml --probe.targets=[row,column]
    python3 probe.py --config configs/probe.yaml --probe.ridge=1.0

For every position of `data.num_samples` fresh matrices (the train set) and `probe.num_test` more
(the test set), the hidden state after the embeddings (`hook_embed`, "layer 0") and after each
layer (`hook_resid_post`, layers 1..L as in the paper) is fitted to
    element          the entry's own value (1 number);
    row              the observed part of the entry's row: its n values, 0 at hidden entries;
    column           the observed part of the entry's column: its m values, 0 at hidden entries;
    singular_vector  the top left singular vector of the whole matrix (m numbers), its sign fixed
                     so that its largest-magnitude entry is positive.
The fit is the authors' plain least squares (`torch.linalg.lstsq`, closed form, with a bias column
unless `probe.bias` is off), or with `probe.ridge` > 0 a ridge regression of that strength
(scikit-learn), which keeps the fit on the embeddings from extrapolating wildly (an
ill-conditioned least squares there: values rare in the train set have barely trained tokens).
Reported per layer: train and test MSE, the test R² (1 − SSE / SST around the train mean), the
mean |cosine| between probe output and target vector (vector targets; rows whose target is all
zero are left out), for the element target the test MSE at observed and at hidden positions, and
for the row and column targets the test R² over the row-mates / column-mates only
(`test_r2_mates`: the entry's own value left out, so the part a probe gets by copying the entry
does not count).

The paper's claim: the observed row is recoverable from layers 3 and 4, not from 1 and 2 (the
authors' probe.yaml names a 12-layer, 12-head model, not the 4 × 8 one of the other figures). The
task is symmetric under transposition, so a model may use columns where theirs used rows: probe
both and compare.

Writes to `out_dir`: probe.png/.pdf (layers 1..L; the embeddings' numbers in the panel titles),
probe.md, summary.json (the figure's numbers), config.yaml.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from analysis import AnalysisConfig, open_analysis
from data import Batch
from model import MatrixBert
from modeling_bert import act_name
from utils.config import UserError, cli, opt, repo_relative
from utils.floats import finite_or_none
from utils.geometry import better_axis
from utils.plots import close_figure, plot_style, pyplot, save_figure
from utils.results import Document, Table, fmt, prepare_output, render, write_results

TARGETS = ("element", "row", "column", "singular_vector")
LINES = {"row": "row", "column": "column"}  # targets whose own entry the mates R² leaves out
# Singular values below this fraction of the largest count as zero in the least-squares fit:
# with gelsy's default (eps × rows) an exactly rank-deficient design (a bias beside one-hot
# columns, LayerNorm outputs) was solved differently from one call to the next.
RCOND = 1e-10


@dataclass
class ProbeSection:
    num_test: int = opt(256, "fresh matrices in the test set (the train set: data.num_samples)")
    targets: list[str] = opt(
        list(TARGETS), "what to probe for: element, row, column, singular_vector"
    )
    bias: bool = opt(True, "fit a bias with the probe (the authors' probes had none)")
    ridge: float = opt(0.0, "0: plain least squares (the authors'); > 0: ridge of this strength")

    def __post_init__(self) -> None:
        if self.num_test < 1:
            raise UserError("'probe.num_test' must be ≥ 1")
        if self.ridge < 0:
            raise UserError(f"'probe.ridge' must be ≥ 0, got {self.ridge}")
        if not self.targets:
            raise UserError("'probe.targets' is empty (valid: " + ", ".join(TARGETS) + ")")
        for t in self.targets:
            if t not in TARGETS:
                raise UserError(f"unknown probe target '{t}' (valid: {', '.join(TARGETS)})")


@dataclass
class Config(AnalysisConfig):
    script = "probe"  # outputs: results/<run folder name>/probe

    probe: ProbeSection = field(default_factory=ProbeSection)


# ----------------------------------------------------------------------------------------------
# Targets: one vector per position, [B, T, k]


def top_left_singular_vector(values: torch.Tensor) -> torch.Tensor:
    """u₁ [B, m] of matrices [B, m, n], signed so that its largest-magnitude entry is positive."""
    u = torch.linalg.svd(values.double(), full_matrices=False).U[..., 0]
    biggest = u.gather(-1, u.abs().argmax(-1, keepdim=True))
    return (u * torch.sign(biggest)).to(values.dtype)


def probe_target(kind: str, batch: Batch) -> torch.Tensor:
    """The probe's target at every position, [B, T, k]."""
    b, m, n = batch.target.shape[0], batch.m, batch.n
    if kind == "element":
        return batch.target.unsqueeze(-1)
    pos = torch.arange(m * n, device=batch.target.device)
    seen = (batch.target * batch.observed).view(b, m, n)
    if kind == "row":
        return seen[:, pos // n, :]
    if kind == "column":
        return seen.transpose(1, 2)[:, pos % n, :]
    if kind == "singular_vector":
        u = top_left_singular_vector(batch.target.view(b, m, n))
        return u[:, None, :].expand(b, m * n, m)
    raise UserError(f"unknown probe target '{kind}' (valid: {', '.join(TARGETS)})")


# ----------------------------------------------------------------------------------------------
# Probes


def with_bias(x: torch.Tensor, bias: bool) -> torch.Tensor:
    return torch.cat([x, torch.ones_like(x[:, :1])], dim=1) if bias else x


def fit_probe(x: torch.Tensor, y: torch.Tensor, bias: bool = True, ridge: float = 0.0):
    """Weights [D (+1), k] mapping features x [N, D] to targets y [N, k].

    Plain least squares (ridge 0) in float64 with a pivoted-QR solver (`gelsy`), which copes with
    rank-deficient features: LayerNorm outputs lie in a hyperplane, so with a bias column they are
    rank-deficient. With ridge > 0, scikit-learn's Ridge (the bias, if any, not penalised).
    """
    if ridge == 0:
        a = with_bias(x.double().cpu(), bias)
        return torch.linalg.lstsq(a, y.double().cpu(), rcond=RCOND, driver="gelsy").solution
    from sklearn.linear_model import Ridge

    y = y.double().cpu()
    fit = Ridge(alpha=ridge, fit_intercept=bias).fit(x.double().cpu().numpy(), y.numpy())
    w = torch.from_numpy(fit.coef_.reshape(y.shape[1], -1).T.copy())  # [D, k]
    if not bias:
        return w
    return torch.cat([w, torch.as_tensor(fit.intercept_, dtype=w.dtype).reshape(1, -1)])


def probe_scores(
    w: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    y_mean: torch.Tensor,
    bias: bool,
    mates: torch.Tensor | None = None,
) -> dict:
    """MSE, R² and mean |cosine| of probe `w` on features x [N, D] and targets y [N, k]; with
    `mates` [N, k] (True off the entry's own coordinate) also the R² over those coordinates."""
    y = y.double().cpu()
    pred = with_bias(x.double().cpu(), bias) @ w
    sse = (pred - y).square().sum()
    sst = (y - y_mean).square().sum()
    out = {"mse": (sse / y.numel()).item(), "r2": (1 - sse / sst).item() if sst > 0 else None}
    if mates is not None:
        keep = mates.double()
        sse_m = ((pred - y).square() * keep).sum()
        sst_m = ((y - y_mean).square() * keep).sum()
        out["r2_mates"] = (1 - sse_m / sst_m).item() if sst_m > 0 else None
    if y.shape[1] > 1:
        keep = y.abs().sum(1) > 0
        cos = F.cosine_similarity(pred[keep], y[keep], dim=1).abs()
        out["cos"] = cos.mean().item() if keep.any() else None
    return out


@torch.no_grad()
def hidden_states(model: MatrixBert, batches: list[Batch]) -> list[torch.Tensor]:
    """Per layer (embedding output, then each layer's output) the states [N·T, D] on the CPU."""
    names = [act_name("embed")]
    names += [act_name("resid_post", i) for i in range(model.config.num_hidden_layers)]
    per_batch = [model.run_with_cache(b.input_ids, names)[1] for b in batches]
    return [torch.cat([c[name].flatten(0, 1).float().cpu() for c in per_batch]) for name in names]


def mates_mask(kind: str, batch: Batch) -> torch.Tensor:
    """[B·T, k]: True at the coordinates of a row / column target other than the entry's own."""
    m, n, b = batch.m, batch.n, batch.target.shape[0]
    pos = torch.arange(m * n)
    own = pos % n if kind == "row" else pos // n  # the entry's index within its row / column
    width = n if kind == "row" else m
    mask = torch.arange(width)[None, :] != own[:, None]  # [T, k]
    return mask.expand(b, -1, -1).flatten(0, 1)


def run_probes(
    train: list[Batch],
    test: list[Batch],
    model: MatrixBert,
    targets: list[str],
    bias: bool,
    ridge: float = 0.0,
) -> dict[str, list[dict]]:
    """{target: one dict of scores per layer (0 = embeddings)}.

    Both fits separate over target columns, so one solve per layer serves every target."""
    targets = list(dict.fromkeys(targets))
    x_train, x_test = hidden_states(model, train), hidden_states(model, test)
    test_observed = torch.cat([b.observed for b in test]).flatten().cpu()
    test_mates = {k: torch.cat([mates_mask(k, b) for b in test]) for k in targets if k in LINES}
    y_train = {
        k: torch.cat([probe_target(k, b).flatten(0, 1) for b in train]).cpu() for k in targets
    }
    y_test = {k: torch.cat([probe_target(k, b).flatten(0, 1) for b in test]).cpu() for k in targets}
    widths = [y_train[k].shape[1] for k in targets]
    results: dict[str, list[dict]] = {k: [] for k in targets}
    for layer, (xa, xb) in enumerate(zip(x_train, x_test)):
        w_all = fit_probe(xa, torch.cat([y_train[k] for k in targets], dim=1), bias, ridge)
        for kind, w in zip(targets, w_all.split(widths, dim=1)):
            ya, yb = y_train[kind], y_test[kind]
            y_mean = ya.double().mean(0)
            tr = probe_scores(w, xa, ya, y_mean, bias)
            te = probe_scores(w, xb, yb, y_mean, bias, test_mates.get(kind))
            row = {
                "layer": layer,
                "train_mse": tr["mse"],
                "test_mse": te["mse"],
                "test_r2": te["r2"],
            }
            if "r2_mates" in te:
                row["test_r2_mates"] = te["r2_mates"]
            if "cos" in te:
                row.update(train_cos=tr["cos"], test_cos=te["cos"])
            if kind == "element":
                for name, sel in (("observed", test_observed), ("hidden", ~test_observed)):
                    part = probe_scores(w, xb[sel], yb[sel], y_mean, bias) if sel.any() else {}
                    row[f"test_mse_{name}"] = part.get("mse")
            results[kind].append(row)
    return results


# ----------------------------------------------------------------------------------------------


def _log_if_wide(ax, values: list) -> None:
    """A log axis only when the values span more than a factor 10; otherwise a linear one from 0,
    so that a change of a percent or two looks as small as it is."""
    vals = [v for v in values if v is not None and v > 0]
    if vals and max(vals) / min(vals) > 10:
        ax.set_yscale("log")
    elif vals:
        ax.set_ylim(0, max(vals) * 1.1)


def plot_probes(summary: dict) -> Any:
    """One row per target, layers 1..L (the embeddings' numbers, often far off, in the titles):
    MSE over layers, and |cosine| with the mates R² (row, column), or observed / hidden MSE."""
    plt = pyplot()
    results = summary["targets"]
    with plt.rc_context(plot_style()):
        fig, axes = plt.subplots(
            len(results), 2, figsize=(10, 3.0 * len(results)), squeeze=False, layout="constrained"
        )
        for (kind, rows), (left, right) in zip(results.items(), axes):
            emb, deep = rows[0], rows[1:]
            layers = [r["layer"] for r in deep]
            for key, label in (("train_mse", "train"), ("test_mse", "test")):
                left.plot(layers, [r[key] for r in deep], "o-", label=label)
            _log_if_wide(left, [r[k] for r in deep for k in ("train_mse", "test_mse")])
            left.set_title(
                f"{kind}: MSE (after the embeddings: test {fmt(emb['test_mse'])})",
                fontsize=9,
            )
            left.set_ylabel("MSE")
            if kind == "element":
                for key, label in (
                    ("test_mse_observed", "observed"),
                    ("test_mse_hidden", "hidden"),
                ):
                    right.plot(layers, [r[key] for r in deep], "o-", label=f"test, {label} entries")
                _log_if_wide(
                    right, [r[k] for r in deep for k in ("test_mse_observed", "test_mse_hidden")]
                )
                right.set_title("element: test MSE by position", fontsize=9)
                right.set_ylabel("MSE")
            else:
                right.plot(layers, [r["test_cos"] for r in deep], "o-", label="test mean |cos|")
                if "test_r2_mates" in deep[0]:
                    mates = "row" if kind == "row" else "column"
                    right.plot(
                        layers,
                        [r["test_r2_mates"] for r in deep],
                        "s--",
                        label=f"test R², {mates}-mates only (own entry left out)",
                    )
                low = min([0.0] + [r.get("test_r2_mates") or 0.0 for r in deep])
                right.set(ylim=(low - 0.02, 1.02), ylabel="|cos|, R²")
                extra = (
                    f", mates R² {fmt(emb.get('test_r2_mates'), 2)}"
                    if "test_r2_mates" in emb
                    else ""
                )
                right.set_title(
                    f"{kind}: fit (embeddings: |cos| {fmt(emb.get('test_cos'), 2)}{extra})",
                    fontsize=9,
                )
            for ax in (left, right):
                ax.set_xticks(layers)
                ax.set_xlabel("hidden state after layer (1-based)")
                ax.legend(frameon=False, fontsize=8)
        fit = "ridge " + fmt(summary.get("ridge")) if summary.get("ridge") else "least squares"
        fig.suptitle(
            f"linear probes ({fit}) on the hidden states, step {summary['step']}", fontsize=10
        )
    return fig


def draw_figures(summary: dict, out_dir: Path) -> tuple[list[Path], list[str]]:
    """probe.png/.pdf from summary.json (scripts/redraw.py uses this too)."""
    fig = plot_probes(summary)
    paths = save_figure(fig, out_dir, "probe", pdf=True)
    close_figure(fig)
    return paths, []


AXIS_MARGIN = 0.05  # how much more of the row-/column-mates' variance a probe must explain


def line_verdict(results: dict) -> dict:
    """For the row and column targets: the mates R² at the first and last layer and its rise; and
    `better_axis`, the one of the two this model's last layer holds better (the transposition
    question): row or column when its mates R² is above AXIS_MARGIN and above the other's by
    AXIS_MARGIN, else neither. An R² that is undefined (None: an SST of 0, or a non-finite fit)
    gives a rise of None, and then the axis is neither."""
    out = {}
    for kind in LINES:
        if kind in results:
            first = results[kind][1].get("test_r2_mates")
            last = results[kind][-1].get("test_r2_mates")
            rise = None if first is None or last is None else last - first
            out[kind] = {"first_layer": first, "last_layer": last, "rise": rise}
    if len(out) == 2:
        row, col = out["row"]["last_layer"], out["column"]["last_layer"]
        if out["row"]["rise"] is None or out["column"]["rise"] is None:
            out["better_axis"] = "neither"
        else:
            out["better_axis"] = better_axis(row, col, AXIS_MARGIN, floor=AXIS_MARGIN)
    return out


def main(cfg: Config) -> dict:
    run = open_analysis(cfg)
    model, ckpt = run.model, run.ckpt
    out_dir = prepare_output(cfg.out_dir, cfg)
    train, test = run.batches(), run.batches(cfg.probe.num_test)
    p = cfg.probe
    results = run_probes(train, test, model, p.targets, p.bias, p.ridge)
    results = {
        k: [{c: finite_or_none(v) for c, v in r.items()} for r in rows]
        for k, rows in results.items()
    }
    step = ckpt.get("step")
    verdict = line_verdict(results)
    summary = {"step": step, "bias": p.bias, "ridge": p.ridge, "targets": results, **verdict}
    fit = f"ridge {p.ridge:g}" if p.ridge else "least squares"
    document: Document = [
        f"Linear probes ({fit}), step {step}; layer 0 = embedding output, layer i = output of "
        "layer i (1-based, as in the paper). test_r2_mates: R² over the row-mates / column-mates "
        "only, the entry's own value left out."
    ]
    for kind, rows in results.items():
        columns = [c for c in rows[0] if c != "layer"]
        document += [kind, Table(rows, ["layer", *columns])]
    if "better_axis" in verdict:
        row, col = verdict["row"], verdict["column"]
        if verdict["better_axis"] != "neither":
            why = f"the last layer holds the {verdict['better_axis']}s better."
        elif row["rise"] is None or col["rise"] is None:
            why = "a mates R² is undefined (—), so neither is named."
        else:
            why = f"neither is held better by more than {AXIS_MARGIN}."
        document.append(
            f"row-mates R² {fmt(row['first_layer'])} → {fmt(row['last_layer'])}, "
            f"column-mates R² {fmt(col['first_layer'])} → {fmt(col['last_layer'])} "
            f"(layer 1 → {len(results['row']) - 1}): {why}"
        )
    print(render(document))
    draw_figures(summary, out_dir)
    write_results(out_dir, summary, {"probe.md": document}, cfg, "probe")
    print(f"outputs in {repo_relative(out_dir)}")
    return summary


if __name__ == "__main__":
    cli(main, Config, __doc__, "configs/probe.yaml", redraw=draw_figures)
