"""Linear probes on the hidden states: what each layer knows about the matrix (paper Fig. 6).

    python3 probe.py --config configs/probe.yaml
    python3 probe.py --config configs/probe.yaml --probe.targets=[row]

For every position of `data.num_samples` fresh matrices (the train set) and `probe.num_test` more
(the test set), the hidden state after the embeddings (`hook_embed`, "layer 0") and after each
layer (`hook_resid_post`, layers 1..L as in the paper) is fitted by least squares
(`torch.linalg.lstsq`, closed form, with a bias column unless `probe.bias` is off) to
    element          the entry's own value (1 number);
    row              the observed part of the entry's row: its n values, 0 at hidden entries;
    singular_vector  the top left singular vector of the whole matrix (m numbers), its sign fixed
                     so that its largest-magnitude entry is positive.
Reported per layer: train and test MSE, the test R² (1 − SSE / SST around the train mean), the
mean |cosine| between probe output and target vector (vector targets; rows whose target is all
zero are left out), and for the element target the test MSE at observed and at hidden positions.
The paper's claim: the observed row is recoverable from layers 3 and 4, not from 1 and 2.

Writes to `out_dir`: probe.png/.pdf (the curves over layers), probe.md, summary.json, config.yaml.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

import utils
from data import Batch, MatrixSampler
from model import MatrixBert, analysis_data_config, load_from_section
from modeling_bert import act_name
from utils import AnalysisData, CkptSection, UserError, WandbConfig, opt

TARGETS = ("element", "row", "singular_vector")


@dataclass
class ProbeSection:
    num_test: int = opt(256, "fresh matrices in the test set (the train set: data.num_samples)")
    targets: list[str] = opt(list(TARGETS), "what to probe for: element, row, singular_vector")
    bias: bool = opt(True, "fit a bias with the probe (the authors' probes had none)")

    def __post_init__(self) -> None:
        if self.num_test < 1:
            raise UserError("'probe.num_test' must be ≥ 1")
        if not self.targets:
            raise UserError("'probe.targets' is empty (valid: " + ", ".join(TARGETS) + ")")
        for t in self.targets:
            if t not in TARGETS:
                raise UserError(f"unknown probe target '{t}' (valid: {', '.join(TARGETS)})")


@dataclass
class Config:
    seed: int = opt(0, "seed for the sampled matrices")
    device: str = opt("auto", "auto (cuda, mps, cpu) or a torch device name")
    out_dir: str = opt("results/probe", "output folder; relative paths from the repo root")
    ckpt: CkptSection = field(default_factory=CkptSection)
    data: AnalysisData = field(default_factory=AnalysisData)
    probe: ProbeSection = field(default_factory=ProbeSection)
    wandb: WandbConfig = field(default_factory=WandbConfig)


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
    pos_row = torch.arange(m * n, device=batch.target.device) // n
    if kind == "row":
        seen = (batch.target * batch.observed).view(b, m, n)
        return seen[:, pos_row, :]
    if kind == "singular_vector":
        u = top_left_singular_vector(batch.target.view(b, m, n))
        return u[:, None, :].expand(b, m * n, m)
    raise UserError(f"unknown probe target '{kind}' (valid: {', '.join(TARGETS)})")


# ----------------------------------------------------------------------------------------------
# Probes


def with_bias(x: torch.Tensor, bias: bool) -> torch.Tensor:
    return torch.cat([x, torch.ones_like(x[:, :1])], dim=1) if bias else x


def fit_probe(x: torch.Tensor, y: torch.Tensor, bias: bool = True) -> torch.Tensor:
    """Least-squares weights [D (+1), k] mapping features x [N, D] to targets y [N, k].

    In float64 with a pivoted-QR solver (`gelsy`), which copes with rank-deficient features:
    LayerNorm outputs lie in a hyperplane, so with a bias column they are rank-deficient.
    """
    a = with_bias(x.double().cpu(), bias)
    return torch.linalg.lstsq(a, y.double().cpu(), driver="gelsy").solution


def probe_scores(
    w: torch.Tensor, x: torch.Tensor, y: torch.Tensor, y_mean: torch.Tensor, bias: bool
) -> dict:
    """MSE, R² and mean |cosine| of probe `w` on features x [N, D] and targets y [N, k]."""
    y = y.double().cpu()
    pred = with_bias(x.double().cpu(), bias) @ w
    sse = (pred - y).square().sum()
    sst = (y - y_mean).square().sum()
    out = {"mse": (sse / y.numel()).item(), "r2": (1 - sse / sst).item() if sst > 0 else None}
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


def run_probes(
    train: list[Batch], test: list[Batch], model: MatrixBert, targets: list[str], bias: bool
) -> dict[str, list[dict]]:
    """{target: one dict of scores per layer (0 = embeddings)}.

    Least squares separates over target columns, so one solve per layer serves every target."""
    targets = list(dict.fromkeys(targets))
    x_train, x_test = hidden_states(model, train), hidden_states(model, test)
    test_observed = torch.cat([b.observed for b in test]).flatten().cpu()
    y_train = {
        k: torch.cat([probe_target(k, b).flatten(0, 1) for b in train]).cpu() for k in targets
    }
    y_test = {k: torch.cat([probe_target(k, b).flatten(0, 1) for b in test]).cpu() for k in targets}
    widths = [y_train[k].shape[1] for k in targets]
    results: dict[str, list[dict]] = {k: [] for k in targets}
    for layer, (xa, xb) in enumerate(zip(x_train, x_test)):
        w_all = fit_probe(xa, torch.cat([y_train[k] for k in targets], dim=1), bias)
        for kind, w in zip(targets, w_all.split(widths, dim=1)):
            ya, yb = y_train[kind], y_test[kind]
            y_mean = ya.double().mean(0)
            tr = probe_scores(w, xa, ya, y_mean, bias)
            te = probe_scores(w, xb, yb, y_mean, bias)
            row = {
                "layer": layer,
                "train_mse": tr["mse"],
                "test_mse": te["mse"],
                "test_r2": te["r2"],
            }
            if "cos" in te:
                row.update(train_cos=tr["cos"], test_cos=te["cos"])
            if kind == "element":
                for name, sel in (("observed", test_observed), ("hidden", ~test_observed)):
                    part = probe_scores(w, xb[sel], yb[sel], y_mean, bias) if sel.any() else {}
                    row[f"test_mse_{name}"] = part.get("mse")
            results[kind].append(row)
    return results


# ----------------------------------------------------------------------------------------------


def plot_probes(results: dict[str, list[dict]], title: str, out_dir: Path) -> list[Path]:
    """One row per target: MSE over layers, and |cosine| (or observed / hidden MSE)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with plt.rc_context(utils.plot_style()):
        fig, axes = plt.subplots(len(results), 2, figsize=(9, 2.8 * len(results)), squeeze=False)
        for (kind, rows), (left, right) in zip(results.items(), axes):
            layers = [r["layer"] for r in rows]
            labels = ["emb"] + [str(i) for i in layers[1:]]
            for key, label in (("train_mse", "train"), ("test_mse", "test")):
                left.plot(layers, [r[key] for r in rows], "o-", label=label)
            # log scale: a probe on the embeddings can be off by orders of magnitude on the test
            # set (values rare in the train set have barely trained token embeddings)
            left.set(title=f"{kind}: MSE", ylabel="MSE", yscale="log")
            if kind == "element":
                for key, label in (
                    ("test_mse_observed", "observed"),
                    ("test_mse_hidden", "hidden"),
                ):
                    right.plot(layers, [r[key] for r in rows], "o-", label=f"test, {label}")
                right.set(title="element: test MSE by position", ylabel="MSE", yscale="log")
            else:
                for key, label in (("train_cos", "train"), ("test_cos", "test")):
                    right.plot(layers, [r[key] for r in rows], "o-", label=label)
                right.set(title=f"{kind}: mean |cosine|", ylabel="|cos|", ylim=(0, 1.02))
            for ax in (left, right):
                ax.set_xticks(layers, labels)
                ax.set_xlabel("hidden state after layer (1-based; emb = embeddings)")
                ax.legend(frameon=False, fontsize=8)
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        paths = utils.save_figure(fig, out_dir, "probe", pdf=True)
        plt.close(fig)
    return paths


def main(cfg: Config) -> dict:
    device = utils.choose_device(cfg.device)
    model, ckpt = load_from_section(cfg.ckpt, device)
    data_cfg = analysis_data_config(ckpt, cfg.data, model)
    out_dir = utils.prepare_output(cfg.out_dir, cfg)
    utils.seed_everything(cfg.seed)
    sampler = MatrixSampler(data_cfg, device, seed=cfg.seed)
    bs, m, n = cfg.data.batch_size, data_cfg.m, data_cfg.n
    train = sampler.sample_many(cfg.data.num_samples, bs, m, n)
    test = sampler.sample_many(cfg.probe.num_test, bs, m, n)
    results = run_probes(train, test, model, cfg.probe.targets, cfg.probe.bias)
    results = {
        k: [{c: utils.finite_or_none(v) for c, v in r.items()} for r in rows]
        for k, rows in results.items()
    }
    step = ckpt.get("step")
    summary = {"step": step, "bias": cfg.probe.bias, "targets": results}
    text = (
        f"Linear probes, step {step}; layer 0 = embedding output, layer i = output of layer i "
        "(1-based, as in the paper).\n"
    )
    for kind, rows in results.items():
        columns = [c for c in rows[0] if c != "layer"]
        text += f"\n{kind}\n\n" + utils.markdown_table(rows, ["layer", *columns])
    print(text)
    plot_probes(results, f"linear probes on the hidden states, step {step}", out_dir)
    utils.write_results(out_dir, summary, {"probe.md": text}, cfg, "probe")
    print(f"outputs in {out_dir}")
    return summary


if __name__ == "__main__":
    utils.cli(main, Config, __doc__, "configs/probe.yaml")
