"""What a model is trained on and measured by, as the training loop sees it: the extension points
of `trainer.fit`, and the matrix-completion task that train.py and train_embed.py train.

`trainer.Trainer` holds the machinery every run shares (model, Adam, samplers, precision,
compile, checkpoint state) and never changes; a `Task` says what is specific to one model:

    loss(input_ids, target, observed)  the training loss and the metrics logged with it
    evaluate()                         the eval metrics on fresh matrices, and one example
    measure_progress()                 the hidden-progress measures of a logging step, and
    derived(record)                    numbers read off the logged record (the heads' roles)
    summarize(records, wall, out_dir)  summary.json from the logged records
    plot(records, out_dir, summary)    loss.png
    wandb_images(step)                 images W&B shows at checkpoint steps
    extra_steps, at_extra_step(...)    work at steps of its own (the GPT's attention maps)
    on_resume(step, out_dir)           drop what it logged after the checkpoint resumed from
    bar_keys                           what the progress bar shows

`MatrixCompletion` is the BERT's (the paper's task); the GPT variant's is
src/gpt/train.py's `GPTCompletion`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from data import MatrixSampler, value_at_hidden
from measures import (
    ROLE_RULE,
    attention_shares,
    final_roles,
    masked_mse,
    representation_collapse,
    role_changes,
    role_counts,
)
from modeling_bert import act_name
from utils.drop import detect_drop
from utils.plots import plot_attention_grid, plot_losses

COPY_VALUE = 0.44  # the value the copy test writes at hidden entries (paper Table 1's first)


class Task:
    """The extension points of the training loop (see the module docstring). `trainer` is the
    `trainer.Trainer` that owns this task: its model, config, device, samplers and autocast."""

    bar_keys: dict[str, str] = {"loss": "loss"}  # progress bar label -> metrics.jsonl key
    extra_steps: frozenset[int] = frozenset()  # steps at which at_extra_step runs

    def __init__(self, trainer: Any):
        self.trainer = trainer
        self.cfg = trainer.cfg

    def loss(self, input_ids, target, observed) -> dict:
        """{"loss": the scalar to minimise, ...: other metrics}, device tensors (no host sync)."""
        raise NotImplementedError

    def evaluate(self) -> tuple[dict, tuple]:
        """(eval metrics as device tensors, one example for train.print_example)."""
        raise NotImplementedError

    def measure_progress(self) -> dict:
        """The hidden-progress measures as device tensors ({} when off); the trainer turns them
        into numbers for metrics.jsonl with the other metrics."""
        return {}

    def derived(self, record: dict) -> dict:
        """Numbers read off a logging step's record (plain numbers) and logged with it."""
        return {}

    def summarize(self, records: list[dict], wall_time: float, out_dir: Path) -> dict:
        raise NotImplementedError

    def plot(self, records: list[dict], out_dir: Path, summary: dict) -> None:
        """Draw loss.png (and whatever else the run shows) from the logged records."""

    def wandb_images(self, step: int) -> dict:
        return {}

    def at_extra_step(self, step: int, out_dir: Path, run: Any) -> None:
        """Work at one of `extra_steps` (`run`: the W&B run or None)."""

    def on_resume(self, step: int, out_dir: Path) -> None:
        """Drop what this task logged after `step`, the checkpoint a run resumes from."""


class MatrixCompletion(Task):
    """The paper's task: the MSE over all entries of a matrix (observed and hidden), the eval
    loss on fresh matrices, and the hidden progress of train.py's docstring on one fixed batch of
    `num_eval` matrices drawn from a generator of its own (so that measuring changes neither the
    training data nor the eval batches)."""

    bar_keys = {"loss": "loss", "L_mask": "loss_mask"}

    def __init__(self, trainer: Any):
        super().__init__(trainer)
        t = self.cfg.train
        self.progress_batch = None
        if t.progress:
            sampler = MatrixSampler(self.cfg.data, trainer.device, seed=t.seed + 2_000_003)
            batch = sampler.sample(t.num_eval)
            self.progress_batch = (batch, *value_at_hidden(batch, COPY_VALUE, self.cfg.data))

    def loss(self, input_ids, target, observed) -> dict:
        with self.trainer.autocast():
            pred = self.trainer.model(input_ids)
        return masked_mse(pred, target, observed)

    @torch.no_grad()
    def evaluate(self) -> tuple[dict, tuple]:
        """{"eval_loss": device tensor} on `num_eval` fresh matrices, and one example
        (prediction, target, observed) as [m, n] matrices."""
        model = self.trainer.model
        model.eval()
        batch = self.trainer.eval_sampler.sample(self.cfg.train.num_eval)
        with self.trainer.autocast():
            pred = model(batch.input_ids).float()
        loss = masked_mse(pred, batch.target, batch.observed)["loss"]
        shape = (batch.m, batch.n)
        example = (pred[0].view(shape), batch.target[0].view(shape), batch.observed[0].view(shape))
        per_size = self.per_size()
        model.train()
        return {"eval_loss": loss, **per_size}, example

    @torch.no_grad()
    def per_size(self) -> dict:
        """With a mixture of sizes (data.sizes), L_mask on `num_eval` fresh matrices of each size,
        as `eval_loss_mask_SxS` (each training batch holds one size: its own L_mask says little
        about the others); {} otherwise. Called in eval mode, after the main eval batch."""
        out = {}
        for size in self.cfg.data.sizes:
            batch = self.trainer.eval_sampler.sample(self.cfg.train.num_eval, m=size, n=size)
            loss = self.loss(batch.input_ids, batch.target, batch.observed)
            out[f"eval_loss_mask_{size}x{size}"] = loss["loss_mask"]
        return out

    @torch.no_grad()
    def measure_progress(self) -> dict:
        """On the fixed batch, as device tensors: att_row / att_col / att_self [L, H], collapse
        [L + 1], copy_mse []."""
        if self.progress_batch is None:
            return {}
        batch, copy_ids, written = self.progress_batch
        model, layers = self.trainer.model, self.cfg.model.num_hidden_layers
        patterns = [act_name("pattern", i) for i in range(layers)]
        states = [act_name("embed")] + [act_name("resid_post", i) for i in range(layers)]
        model.eval()
        with self.trainer.autocast():
            _, cache = model.run_with_cache(batch.input_ids, patterns + states)
            copied = model(copy_ids).float()
        model.train()
        shares = [attention_shares(cache[k], batch.observed, batch.m, batch.n) for k in patterns]
        hidden = (~batch.observed).float()
        return {
            **{f"att_{k}": torch.stack([s[k] for s in shares]) for k in ("row", "col", "self")},
            "collapse": torch.stack([representation_collapse(cache[k]) for k in states]),
            "copy_mse": ((copied - written).square() * hidden).sum() / hidden.sum(),
        }

    def derived(self, record: dict) -> dict:
        """How many heads are row, column and self heads (measures.ROLE_RULE), for dashboards."""
        return role_counts(record)

    def summarize(self, records: list[dict], wall_time: float, out_dir: Path) -> dict:
        """Plateau, drop and final numbers from the logged curve; the heads' roles."""
        drop = detect_drop([r["step"] for r in records], [r["loss"] for r in records])
        last = records[-1] if records else {}
        drop_time = None
        if drop["drop_step"] is not None:
            drop_time = next(r["time"] for r in records if r["step"] == drop["drop_step"])
        timed = [r for r in records if r.get("steps_per_s")]
        return {
            **drop,
            "drop_time_s": drop_time,
            "final_step": last.get("step"),
            "final_loss": last.get("loss"),
            "final_loss_obs": last.get("loss_obs"),
            "final_loss_mask": last.get("loss_mask"),
            "final_eval_loss": last.get("eval_loss"),
            "wall_time_s": wall_time,
            "steps_per_s": timed[-1]["steps_per_s"] if timed else None,
            "device": str(self.trainer.device),
            "precision": self.trainer.precision,
            "compile": self.cfg.train.compile,
            "head_roles": role_changes(records),
            "head_numbering": "layer and head 0-based (loss.png labels LiHj 1-based)",
            "role_rule": ROLE_RULE,
            "final_collapse": last.get("collapse"),
            "final_copy_mse": last.get("copy_mse"),
        }

    def plot(self, records: list[dict], out_dir: Path, summary: dict) -> None:
        d = self.cfg.data
        shape = (d.m, d.n) if not d.sizes else None
        plot_losses(records, out_dir, summary, self.cfg.wandb.name, shape, final_roles(records))

    def wandb_images(self, step: int) -> dict:
        """The mean attention of every head on the fixed batch (a slider over steps in W&B)."""
        if self.progress_batch is None:
            return {}
        batch, model = self.progress_batch[0], self.trainer.model
        names = [act_name("pattern", i) for i in range(self.cfg.model.num_hidden_layers)]
        model.eval()
        with torch.no_grad(), self.trainer.autocast():
            _, cache = model.run_with_cache(batch.input_ids, names)
        model.train()
        pattern = torch.stack([cache[k].float().mean(0) for k in names]).cpu()  # [L, H, T, T]
        return {"attention": plot_attention_grid(pattern, batch.m, batch.n, f"step {step}")}
