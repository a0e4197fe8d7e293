"""Train the GPT variant: a small decoder that reads a masked matrix and writes out the full one.

    python3 -m src.gpt.train --config src/configs/gpt.yaml        # the paper's setting (a GPU)
    python3 -m src.gpt.train --config src/configs/gpt.yaml --model.attention=linear
    python3 -m src.gpt.train --config src/configs/gpt_cpu.yaml     # a few minutes on one CPU core

Each step draws fresh matrices, turns them into sequences (masked matrix, SEP, full matrix; see
src/gpt/sequences.py) and takes one Adam step on the next-token cross-entropy over the whole
sequence.
Every `log_every` steps it logs, on the training batch, that loss (`loss`) and the loss on the
completion's observed (`loss_obs`) and hidden (`loss_mask`) entries; and on `num_eval` fresh
matrices the same loss (`eval_loss`) and the greedy completion's accuracy over all entries
(`acc`), at observed entries (`acc_obs`) and at hidden ones (`acc_mask`), with the MSE of the
decoded values at hidden entries (`mse_mask`; predicting 0 there gives E[X²] = 2/9 for the paper's
data). The host waits for the device only on those steps and at `attn_map_steps`.

The paper's claim (its GPT section): a sudden drop that is the model learning to copy the observed
entries (`loss_obs` falls, `acc_obs` jumps towards 1) while the hidden ones stay unsolved
(`acc_mask` stays low); attention goes from trivial (step ≈ 200) to copying the matching input
position (step ≈ 600). At each of `attn_map_steps` the script draws every head's attention on one
fixed matrix, and a copy score per head: the mean attention that the query predicting entry k pays
to entry k in the prompt, over observed entries of `attn_map_examples` fixed matrices (with
softmax attention ≈ 1 for a head that copies, ≈ 1/position for a uniform one).

Writes to `out_dir`: config.yaml, metrics.jsonl, attention.jsonl (copy scores), loss.png,
attn_step_NNNNNN.png, step_NNNNNN.pt checkpoints and summary.json (the `loss_obs` plateau, the step
where the copying drop starts, final numbers). Checkpoints hold model, optimizer, step, config and
RNG states, like train.py's; `src.gpt.model.load_gpt` rebuilds the model from one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from data import Batch, DataConfig, MatrixSampler
from src.gpt.model import GPT, GPTConfig, act_name, generate
from src.gpt.sequences import build_sequences, context_length, decode, value_id_range, vocab_size
from task import Task
from trainer import BATCH_TOO_BIG, MODEL_TOO_BIG, Trainer, TrainSection, fit
from utils.config import UserError, cli, opt, repo_relative
from utils.device import allocation_errors, seed_everything
from utils.drop import detect_drop
from utils.plots import plot_style, pyplot, save_figure
from utils.results import fmt, print_rows
from utils.runs import prepare_run_dir, read_metrics, trim_jsonl
from utils.tracking import TrainWandbConfig


@dataclass
class GPTTrainSection(TrainSection):
    """train.py's options, plus the attention maps."""

    attn_map_steps: list[int] = opt([200, 600], "steps at which to draw attention maps (PNG)")
    attn_map_examples: int = opt(16, "fixed matrices the copy score of each map averages over")

    def __post_init__(self) -> None:
        super().__post_init__()
        if any(s < 1 for s in self.attn_map_steps) or self.attn_map_examples < 1:
            raise UserError("'train.attn_map_steps' and 'train.attn_map_examples' must be ≥ 1")


@dataclass
class GPTTrainConfig:
    data: DataConfig
    model: GPTConfig
    train: GPTTrainSection
    wandb: TrainWandbConfig

    def finalize(self, config_path: Path | None = None) -> None:
        """Fill derived values: vocabulary and context size, output folder, run name."""
        self.model.vocab_size = vocab_size(self.data)
        self.model.block_size = context_length(self.data)
        stem = Path(config_path).stem if config_path else "gpt"
        if self.train.out_dir is None:
            self.train.out_dir = f"runs/{stem}"
        if self.wandb.name is None:  # the run folder's: a sweep's runs are named by overrides
            self.wandb.name = Path(self.train.out_dir).name


# ----------------------------------------------------------------------------------------------
# Losses and metrics (device tensors; nothing here waits for the device)


def masked_mean(x: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """Mean of `x` where `where` is true (NaN over an empty set)."""
    w = where.to(x.dtype)
    return (x * w).sum() / w.sum()


def sequence_losses(logits: torch.Tensor, seq: torch.Tensor, observed: torch.Tensor) -> dict:
    """Next-token cross-entropy of `logits` [B, 2T, V] against `seq` [B, 2T + 1]: over every
    position (`loss`, what training minimises) and over the completion's observed and hidden
    entries (`loss_obs`, `loss_mask`). `observed` is [B, T]."""
    ce = F.cross_entropy(logits.float().transpose(1, 2), seq[:, 1:], reduction="none")  # [B, 2T]
    completion = ce[:, observed.shape[1] :]  # predictions of positions T+1 .. 2T: the full matrix
    return {
        "loss": ce.mean(),
        "loss_obs": masked_mean(completion, observed),
        "loss_mask": masked_mean(completion, ~observed),
    }


def completion_metrics(
    generated: torch.Tensor, seq: torch.Tensor, values: torch.Tensor, batch: Batch
) -> dict:
    """Greedy completion ids `generated` [B, T] and their decoded `values` [B, T] against the
    truth: the completion part of `seq` and `batch.target`, split by `batch.observed`."""
    t = generated.shape[1]
    correct = (generated == seq[:, t + 1 :]).float()
    err = (values - batch.target).square()
    return {
        "acc": correct.mean(),
        "acc_obs": masked_mean(correct, batch.observed),
        "acc_mask": masked_mean(correct, ~batch.observed),
        "mse_mask": masked_mean(err, ~batch.observed),
    }


def copy_scores(patterns: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """[L, H]: mean attention from the query that predicts entry k (position T + k) to entry k
    in the prompt (position k), over the observed entries, for patterns [B, L, H, 2T, 2T]."""
    t = observed.shape[1]
    k = torch.arange(t, device=patterns.device)
    to_own_entry = patterns[..., t + k, k]  # [B, L, H, T]
    w = observed[:, None, None, :].to(patterns.dtype)
    return (to_own_entry * w).sum((0, 3)) / w.sum((0, 3))


# ----------------------------------------------------------------------------------------------
# The GPT's task: what trainer.fit trains and measures (task.py's extension points)


class GPTCompletion(Task):
    """The next-token loss over the whole sequence, the greedy completion's accuracy, each head's
    copy score as its hidden progress, and the attention maps at `attn_map_steps`."""

    bar_keys = {"loss_obs": "loss_obs", "acc_obs": "acc_obs"}

    def __init__(self, trainer: Trainer):
        super().__init__(trainer)
        # Hidden entries were never checked against the vocabulary; the full matrix must be.
        self.check_values = trainer.sampler.needs_check(self.cfg.data.rank)
        self.value_ids = value_id_range(self.cfg.data)
        self.extra_steps = frozenset(self.cfg.train.attn_map_steps)  # attention maps drawn there

    def loss(self, input_ids, target, observed) -> dict:
        seq = build_sequences(input_ids, target, self.cfg.data, self.check_values)
        with self.trainer.autocast():
            logits = self.trainer.model(seq[:, :-1])
        return sequence_losses(logits, seq, observed)

    @torch.no_grad()
    def evaluate(self) -> tuple[dict, tuple]:
        """Eval loss and greedy-completion metrics on `num_eval` fresh matrices (device tensors),
        and one example (decoded completion, target, observed) as [m, n] matrices."""
        model = self.trainer.model
        model.eval()
        batch = self.trainer.eval_sampler.sample(self.cfg.train.num_eval)
        t = batch.m * batch.n
        seq = build_sequences(batch.input_ids, batch.target, self.cfg.data, self.check_values)
        with self.trainer.autocast():
            eval_loss = sequence_losses(model(seq[:, :-1]), seq, batch.observed)["loss"]
            generated = generate(model, seq[:, : t + 1], t, self.value_ids)
        model.train()
        values = decode(generated, batch.m, batch.n, self.cfg.data)
        metrics = {
            "eval_loss": eval_loss,
            **completion_metrics(generated, seq, values.flatten(1), batch),
        }
        shape = (batch.m, batch.n)
        example = (values[0], batch.target[0].view(shape), batch.observed[0].view(shape))
        return metrics, example

    # The hooks train.fit calls: the GPT's bar, summary, figures and attention maps.

    def summarize(self, records: list[dict], wall_time: float, out_dir: Path) -> dict:
        attn = read_metrics(out_dir / "attention.jsonl")
        device, precision = str(self.trainer.device), self.trainer.precision
        return summarize(records, attn, wall_time, self.cfg, device, precision)

    def plot(self, records: list[dict], out_dir: Path, summary: dict) -> None:
        plot_curves(records, out_dir, summary, title=self.cfg.wandb.name)

    def at_extra_step(self, step: int, out_dir: Path, run) -> None:
        """Draw the attention maps and log every head's copy score (attention.jsonl, W&B)."""
        patterns, observed = self.attention()
        copy = copy_scores(patterns, observed)
        plot_attention(patterns[0], copy, step, out_dir, self.cfg.model.attention == "linear")
        record = {"step": step, "copy_score": copy.cpu().tolist()}
        with open(out_dir / "attention.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if run is not None:
            scores = {
                f"copy_score/L{i + 1}H{j + 1}": v
                for i, row in enumerate(record["copy_score"])
                for j, v in enumerate(row)
            }
            run.log(scores, step=step)

    def on_resume(self, step: int, out_dir: Path) -> None:
        trim_jsonl(out_dir / "attention.jsonl", step)

    @torch.no_grad()
    def measure_progress(self) -> dict:
        """The GPT's hidden progress at every log step: each head's copy score [L, H] on the
        attention maps' fixed matrices (the BERT's row/column shares do not apply here)."""
        if not self.cfg.train.progress:
            return {}
        return {"copy_score": copy_scores(*self.attention())}

    @torch.no_grad()
    def attention(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every head's pattern [B, L, H, 2T, 2T] on `attn_map_examples` matrices that are the
        same at every call (their own seed), and the matrices' `observed` [B, T]."""
        c = self.cfg
        sampler = MatrixSampler(c.data, self.trainer.device, seed=c.train.seed + 2_000_003)
        batch = sampler.sample(c.train.attn_map_examples)
        seq = build_sequences(batch.input_ids, batch.target, c.data, self.check_values)
        names = [act_name("pattern", i) for i in range(c.model.n_layer)]
        model = self.trainer.model
        model.eval()
        with self.trainer.autocast():
            _, cache = model.run_with_cache(seq[:, :-1], names)
        model.train()
        return torch.stack([cache[name].float() for name in names], dim=1), batch.observed


# ----------------------------------------------------------------------------------------------
# Figures


def plot_attention(
    pattern: torch.Tensor, copy: torch.Tensor, step: int, out_dir: Path, linear: bool
) -> list[Path]:
    """`attn_step_NNNNNN.png`: every head's pattern [L, H, S, S] on one matrix, one colour scale."""
    plt = pyplot()
    n_layer, n_head, s, _ = pattern.shape
    p = pattern.cpu().numpy()
    if linear:  # signed and unnormalised: centre the colours on 0
        lim = float(abs(p).max()) or 1.0
        scale = {"cmap": "RdBu_r", "vmin": -lim, "vmax": lim}
    else:
        scale = {"cmap": "viridis", "vmin": 0.0, "vmax": 1.0}
    with plt.rc_context({**plot_style(), "axes.grid": False}):
        fig, axes = plt.subplots(
            n_layer,
            n_head,
            figsize=(0.4 + 2.8 * n_head, 0.4 + 2.8 * n_layer),
            squeeze=False,
            layout="constrained",
        )
        for layer in range(n_layer):
            for head in range(n_head):
                ax = axes[layer, head]
                im = ax.imshow(p[layer, head], **scale)
                for draw in (ax.axhline, ax.axvline):
                    draw(s // 2, color="w", ls="--", lw=0.6)  # the separator, at position T
                ax.set_title(
                    f"layer {layer + 1}, head {head + 1}: copy {float(copy[layer, head]):.2f}",
                    fontsize=9,
                )
                if layer == n_layer - 1:
                    ax.set_xlabel("key position")
                if head == 0:
                    ax.set_ylabel("query position")
        fig.colorbar(im, ax=axes, shrink=0.8)
        fig.suptitle(f"step {step}: attention on one matrix (1-based layers/heads; dashed: SEP)")
        paths = save_figure(fig, out_dir, f"attn_step_{step:06d}")
        plt.close(fig)
    return paths


def plot_curves(records: list[dict], out_dir: Path, drop: dict, title: str = "") -> list[Path]:
    """`loss.png`: cross-entropies (log scale) and completion accuracies against step."""
    plt = pyplot()
    steps = [r["step"] for r in records]
    with plt.rc_context(plot_style()):
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
        for key, label in (
            ("loss", "whole sequence"),
            ("loss_obs", "observed entries"),
            ("loss_mask", "hidden entries"),
        ):
            left.plot(steps, [r[key] for r in records], label=label, lw=1.2)
        left.set(xlabel="step", ylabel="next-token cross-entropy", yscale="log")
        for key, label in (("acc", "all"), ("acc_obs", "observed"), ("acc_mask", "hidden")):
            right.plot(steps, [r[key] for r in records], label=label, lw=1.2)
        right.set(xlabel="step", ylabel="greedy completion accuracy (eval)", ylim=(-0.02, 1.02))
        for ax in (left, right):
            if drop.get("drop_step") is not None:
                ax.axvline(drop["drop_step"], color="k", ls="--", lw=0.8, label="drop starts")
            ax.legend(loc="best")
        fig.suptitle(title)
        paths = save_figure(fig, out_dir, "loss")
        plt.close(fig)
    return paths


# ----------------------------------------------------------------------------------------------
# The summary


def summarize(
    records: list[dict],
    attn: list[dict],
    wall_time: float,
    cfg: GPTTrainConfig,
    device: str,
    precision: str,
) -> dict:
    """The copying drop (detected on `loss_obs`), final numbers and copy scores."""
    # The GPT's plateau lasts a few hundred steps of a 100k-step run, so no minimum length: a
    # flat stretch of 3 logged points will do, and `plateau_loss` is the first one's level. The
    # extra logs before the first `log_every` (the initial fall) are left out: their first
    # flat stretch is the loss at initialisation, not the plateau.
    regular = [r for r in records if r["step"] >= cfg.train.log_every]
    steps = [r["step"] for r in regular]
    drop = detect_drop(steps, [r["loss_obs"] for r in regular], min_plateau_frac=0.0)
    last = records[-1] if records else {}
    timed = [r for r in records if r.get("steps_per_s")]
    finals = ("loss", "loss_obs", "loss_mask", "eval_loss", "acc", "acc_obs", "acc_mask")
    return {
        "drop_metric": "loss_obs",
        **drop,
        "final_step": last.get("step"),
        **{f"final_{k}": last.get(k) for k in (*finals, "mse_mask")},
        "copy_score": {str(a["step"]): a["copy_score"] for a in attn},
        "wall_time_s": wall_time,
        "steps_per_s": timed[-1]["steps_per_s"] if timed else None,
        "device": device,
        "attention": cfg.model.attention,
        "precision": precision,
        "compile": cfg.train.compile,
    }


def print_summary(summary: dict, out_dir: Path) -> None:
    def values(*keys: str) -> str:
        return " / ".join(fmt(summary[k], 4) for k in keys)

    print_rows(
        [
            ("loss_obs plateau", values("plateau_loss")),
            ("copying drop starts / ends at step", values("drop_step", "drop_end_step")),
            ("final loss (whole sequence)", values("final_loss")),
            ("final loss_obs / loss_mask", values("final_loss_obs", "final_loss_mask")),
            (
                "final acc / acc_obs / acc_mask",
                values("final_acc", "final_acc_obs", "final_acc_mask"),
            ),
            ("final mse_mask", values("final_mse_mask")),
            ("steps/s (last interval)", values("steps_per_s")),
            ("wall time (s)", values("wall_time_s")),
        ]
    )
    for step, scores in summary["copy_score"].items():
        heads = ", ".join(
            f"L{i + 1}H{j + 1} {v:.2f}" for i, row in enumerate(scores) for j, v in enumerate(row)
        )
        print(f"copy score at step {step} (layers, heads 1-based): {heads}")
    print(f"outputs in {repo_relative(out_dir)}")


def main(cfg: GPTTrainConfig) -> dict:
    out_dir, resume_from = prepare_run_dir(cfg)
    with allocation_errors(MODEL_TOO_BIG):
        seed_everything(cfg.train.seed)  # the initialisation, as the Trainer seeds before its own
        trainer = Trainer(cfg, task=GPTCompletion, model=GPT(cfg.model))
    n_params = sum(p.numel() for p in trainer.model.parameters())
    folder = repo_relative(out_dir)
    print(f"{n_params / 1e6:.2f}M parameters on {trainer.device}; writing to {folder}")
    with allocation_errors(BATCH_TOO_BIG):
        summary = fit(cfg, trainer, out_dir, resume_from)
    print_summary(summary, out_dir)
    return summary


if __name__ == "__main__":
    cli(main, GPTTrainConfig, __doc__, "src/configs/gpt.yaml")
