"""Train the BERT to complete low-rank matrices and watch the plateau and the sudden drop.

    python3 train.py --config configs/train.yaml            # the paper's setting (a GPU)
    python3 train.py --config configs/train_tiny.yaml       # the CPU demo
    python3 train.py --config configs/train.yaml --train.steps=20000 --wandb.log=true

Each step draws a fresh batch (there is no fixed data set, so the training loss is a test loss),
predicts every entry, and takes one Adam step on the MSE over all entries (paper Fig. 1/2).
Every `log_every` steps it logs loss, L_obs, L_mask, the mean |prediction| at hidden entries and an
eval loss on fresh matrices; the host waits for the GPU only on those steps. With `train.progress`
(on by default) it also logs the hidden progress that precedes the drop (Gopalani & Hu, 2025; an
extension, not in the matrix-completion paper), on one fixed batch of `num_eval` matrices:
    att_row, att_col, att_self  [layer][head] share of each head's attention on the query's row,
                                its column, itself (model.attention_shares, as att_maps.py);
    collapse                    mean |cosine| between the hidden states of different positions,
                                after the embeddings and after each layer (representation collapse);
    copy_mse                    the Table 1 test as one number: the MSE between the output at
                                hidden entries and the value written there instead of MASK
                                (COPY_VALUE as its token encodes it, rounded to data.prec;
                                ≈ 0 for a model that copies its input).
Writes to `out_dir`: config.yaml, metrics.jsonl, loss.png (losses; with progress also each head's
share and the collapse), step_NNNNNN.pt checkpoints and summary.json (plateau level, the step
where the drop starts, final losses, and each head's role with the step it took it on).
Ctrl-C (or SIGTERM) finishes the current step, saves a checkpoint, the summary and the plot, and
prints the command that resumes the run.
"""

from __future__ import annotations

import contextlib
import json
import math
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch
from tqdm import tqdm

import utils
from data import DataConfig, MatrixSampler, value_at_hidden
from model import (
    ROLE_RULE,
    MatrixBert,
    attention_shares,
    check_fits,
    final_roles,
    representation_collapse,
    role_changes,
    role_counts,
)
from modeling_bert import BertConfig, act_name
from utils import TrainWandbConfig, UserError, opt

PRECISIONS = ("auto", "fp32", "tf32", "bf16")
LR_SCHEDULES = ("constant", "cosine", "wsd")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")
COPY_VALUE = 0.44  # the value the copy test writes at hidden entries (paper Table 1's first)
EARLY_LOGS = 8  # extra logs within the first log_every steps (see TrainSection.logs_at)


@dataclass
class TrainSection:
    steps: int = opt(50_000, "optimizer steps, each on a fresh batch")
    batch_size: int = opt(256, "matrices per step")
    num_eval: int = opt(64, "fresh matrices for the eval loss at each logging step")
    lr: float = opt(1e-4, "Adam learning rate (no clipping or weight decay)")
    lr_schedule: str = opt(
        "constant",
        "constant (the paper's), cosine (to 0 at the last step) or wsd (warm-up, stable, decay: "
        "constant, then linear to 0 over the last decay_fraction of the steps)",
        LR_SCHEDULES,
        since="2026-12-03",
    )
    warmup_steps: int = opt(
        0, "linear warm-up of the lr from 0 over this many steps (0: none)", since="2026-12-03"
    )
    decay_fraction: float = opt(
        0.2, "wsd: the share of the steps over which the lr decays to 0", since="2026-12-03"
    )
    seed: int = opt(0, "seed for initialisation and data")
    log_every: int = opt(
        100,
        "log (and sync with the device) every this many steps; before the first, also "
        "every log_every // 8 steps",
    )
    save_every: int = opt(10_000, "checkpoint every this many steps (0: never)")
    save_steps: list[int] = opt([], "extra steps to checkpoint (the analyses' steps)")
    out_dir: str | None = opt(None, "output folder; null: runs/<config stem> in the repo")
    resume: bool = opt(False, "continue from the latest checkpoint in out_dir")
    precision: str = opt(
        "fp32",
        "fp32, tf32 (TF32 matmuls), bf16 (autocast) or auto (bf16 where the device has native "
        "bf16 matmuls, else fp32; see resolve_precision)",
        PRECISIONS,
    )
    compile: bool = opt(False, "torch.compile the forward and loss")
    compile_mode: str = opt("default", "torch.compile mode", COMPILE_MODES)
    device: str = opt("auto", "auto (cuda, mps, cpu) or a torch device name")
    print_example: bool = opt(False, "print one eval matrix (prediction vs truth) per log")
    progress: bool = opt(
        True, "also log hidden progress (head shares, collapse, copy test) at each log step"
    )

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "num_eval", "log_every"):
            if getattr(self, name) < 1:
                raise UserError(f"'train.{name}' must be ≥ 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise UserError(f"'train.lr' must be positive, got {self.lr}")
        if self.save_every < 0 or any(s < 1 for s in self.save_steps):
            raise UserError("'train.save_every' must be ≥ 0 and 'train.save_steps' ≥ 1")
        if not 0 <= self.warmup_steps < self.steps:
            raise UserError(
                f"'train.warmup_steps' must be in [0, train.steps), got {self.warmup_steps}"
            )
        if not 0.0 < self.decay_fraction <= 1.0:
            raise UserError(f"'train.decay_fraction' must be in (0, 1], got {self.decay_fraction}")

    def lr_at(self, step: int) -> float:
        """The learning rate of the update that makes `step` (1 … steps): a pure function of the
        step, so a resumed run follows the same schedule with nothing extra to save."""
        if step <= self.warmup_steps:
            return self.lr * step / self.warmup_steps
        if self.lr_schedule == "cosine":
            progress = (step - self.warmup_steps) / (self.steps - self.warmup_steps)
            return self.lr * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        if self.lr_schedule == "wsd":
            decay_steps = self.decay_fraction * self.steps
            return self.lr * min(1.0, max(self.steps - step, 0) / decay_steps)
        return self.lr

    def logs_at(self, step: int) -> bool:
        """Every `log_every` steps and at the last; and, so that short runs and the quick early
        fall of L_obs show in the curve, every `log_every // EARLY_LOGS` steps before the first.
        The rule does not depend on `steps`, so a resumed run logs where an uninterrupted one
        does."""
        if step % self.log_every == 0 or step == self.steps:
            return True
        early = self.log_every // EARLY_LOGS
        return early > 0 and step < self.log_every and step % early == 0


@dataclass
class TrainConfig:
    data: DataConfig
    model: BertConfig
    train: TrainSection
    wandb: TrainWandbConfig

    def finalize(self, config_path: Path | None = None) -> None:
        """Fill derived values: vocabulary size, output folder, run name."""
        self.model.vocab_size = self.data.vocab_size
        self.model.pad_token_id = 0  # the MASK id
        check_fits(self.model, self.data.vocab_size, self.data.max_tokens)
        stem = Path(config_path).stem if config_path else "train"
        if self.train.out_dir is None:
            self.train.out_dir = f"runs/{stem}"
        if self.wandb.name is None:  # the run folder's: a sweep's runs are named by overrides
            self.wandb.name = Path(self.train.out_dir).name


# ----------------------------------------------------------------------------------------------
# The training step


class Trainer:
    """Model, optimizer, samplers and one `step()`: the loop shared by train.py, train_embed.py
    and bench.py. `params` limits what Adam updates (default: every parameter)."""

    # What the progress bar shows after a logging step: {label: metrics.jsonl key}.
    bar_keys = {"loss": "loss", "L_mask": "loss_mask"}
    # Steps at which `at_extra_step` runs (besides logging and checkpoints).
    extra_steps: frozenset[int] = frozenset()

    def __init__(self, cfg: TrainConfig, model: MatrixBert | None = None, params=None):
        t = cfg.train
        self.cfg = cfg
        self.device = utils.choose_device(t.device)
        utils.seed_everything(t.seed)
        self.model = (model or MatrixBert(cfg.model)).to(self.device).train()
        params = (
            [p for p in self.model.parameters() if p.requires_grad] if params is None else params
        )
        # Fused Adam: the same update in one kernel instead of a loop over parameters (on a CPU,
        # 24.7 vs 20.7 steps/s at batch 16, equal at batch 128; one thread, bf16, tiny config).
        fused = self.device.type in ("cuda", "cpu")
        self.optimizer = torch.optim.Adam(params, lr=t.lr, fused=fused or None)
        self.sampler = MatrixSampler(cfg.data, self.device, seed=t.seed)
        self.eval_sampler = MatrixSampler(cfg.data, self.device, seed=t.seed + 1_000_003)
        self.precision = utils.resolve_precision(t.precision, self.device)
        # TF32 matmuls only when asked: fp32 means full fp32 (PyTorch's default is the same).
        torch.set_float32_matmul_precision("high" if self.precision == "tf32" else "highest")
        self.autocast_dtype = torch.bfloat16 if self.precision == "bf16" else None
        self.loss_fn = self._loss
        cuda = self.device.type == "cuda"
        self.cudagraphs = t.compile and t.compile_mode == "reduce-overhead" and cuda
        if t.compile:
            self.loss_fn = torch.compile(self._loss, mode=t.compile_mode)
        self.step_count = 0
        self.nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)
        # The hidden-progress measures' fixed batch, from a generator of its own: drawing it
        # changes neither the training data nor the eval batches.
        self.progress_batch = None
        if t.progress:
            batch = MatrixSampler(cfg.data, self.device, seed=t.seed + 2_000_003).sample(t.num_eval)
            self.progress_batch = (batch, *value_at_hidden(batch, COPY_VALUE, cfg.data))

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _loss(self, input_ids, target, observed) -> dict:
        with self.autocast():
            pred = self.model(input_ids)
        return utils.masked_mse(pred, target, observed)

    def step(self) -> dict:
        """One Adam update on a fresh batch; returns that batch's metrics as device tensors."""
        if self.cudagraphs:  # outputs of the previous replay may be overwritten from here on
            torch.compiler.cudagraph_mark_step_begin()
        t = self.cfg.train
        batch = self.sampler.sample(t.batch_size)
        metrics = self.loss_fn(batch.input_ids, batch.target, batch.observed)
        self.optimizer.zero_grad(set_to_none=True)
        metrics["loss"].backward()
        if t.lr_schedule != "constant" or t.warmup_steps:
            lr = t.lr_at(self.step_count + 1)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
        self.optimizer.step()
        self.step_count += 1
        self.nonfinite |= ~torch.isfinite(metrics["loss"].detach())
        if self.cudagraphs:  # the next replay reuses these buffers
            return {k: v.detach().clone() for k, v in metrics.items()}
        return {k: v.detach() for k, v in metrics.items()}

    # What `fit` asks of a trainer besides `step`; the GPT variant (src/gpt/train.py) overrides
    # these to log its own metrics, summary, figures and attention maps through the same loop.

    @torch.no_grad()
    def evaluate(self) -> tuple[dict, tuple]:
        """{"eval_loss": device tensor} on `num_eval` fresh matrices, and one example
        (prediction, target, observed) as [m, n] matrices."""
        self.model.eval()
        batch = self.eval_sampler.sample(self.cfg.train.num_eval)
        with self.autocast():
            pred = self.model(batch.input_ids).float()
        self.model.train()
        loss = utils.masked_mse(pred, batch.target, batch.observed)["loss"]
        shape = (batch.m, batch.n)
        example = (pred[0].view(shape), batch.target[0].view(shape), batch.observed[0].view(shape))
        return {"eval_loss": loss}, example

    @torch.no_grad()
    def measure_progress(self) -> dict:
        """The hidden-progress measures (see the module docstring) on the fixed batch, as device
        tensors: att_row / att_col / att_self [L, H], collapse [L + 1], copy_mse []."""
        if self.progress_batch is None:
            return {}
        batch, copy_ids, written = self.progress_batch
        layers = self.cfg.model.num_hidden_layers
        patterns = [act_name("pattern", i) for i in range(layers)]
        states = [act_name("embed")] + [act_name("resid_post", i) for i in range(layers)]
        self.model.eval()
        with self.autocast():
            _, cache = self.model.run_with_cache(batch.input_ids, patterns + states)
            copied = self.model(copy_ids).float()
        self.model.train()
        shares = [attention_shares(cache[k], batch.observed, batch.m, batch.n) for k in patterns]
        hidden = (~batch.observed).float()
        return {
            **{f"att_{k}": torch.stack([s[k] for s in shares]) for k in ("row", "col", "self")},
            "collapse": torch.stack([representation_collapse(cache[k]) for k in states]),
            "copy_mse": ((copied - written).square() * hidden).sum() / hidden.sum(),
        }

    def log_record(self, step: int, metrics: dict) -> tuple[dict, tuple]:
        """What a logging step records: the training batch's `metrics`, the eval loss and the
        hidden-progress measures as Python numbers (one host sync), and the eval example."""
        evaluated, example = self.evaluate()
        record = {"step": step, **utils.to_floats({**metrics, **evaluated})}
        record["lr"] = self.optimizer.param_groups[0]["lr"]
        record.update(utils.to_lists(self.measure_progress()))
        record.update(role_counts(record))
        return record, example

    def summarize(self, records: list[dict], wall_time: float, out_dir: Path) -> dict:
        return summarize(records, wall_time, self.cfg, str(self.device), self.precision)

    def wandb_images(self, step: int) -> dict:
        """Images W&B shows at checkpoint steps (a slider over steps): the mean attention of every
        head on the fixed batch."""
        if self.progress_batch is None:
            return {}
        batch = self.progress_batch[0]
        layers = self.cfg.model.num_hidden_layers
        names = [act_name("pattern", i) for i in range(layers)]
        self.model.eval()
        with torch.no_grad(), self.autocast():
            _, cache = self.model.run_with_cache(batch.input_ids, names)
        self.model.train()
        pattern = torch.stack([cache[k].float().mean(0) for k in names]).cpu()  # [L, H, T, T]
        fig = utils.plot_attention_grid(pattern, batch.m, batch.n, f"step {step}")
        return {"attention": fig}

    def plot(self, records: list[dict], out_dir: Path, summary: dict) -> None:
        d = self.cfg.data
        shape = (d.m, d.n) if not d.sizes else None
        utils.plot_losses(
            records, out_dir, summary, self.cfg.wandb.name, shape, final_roles(records)
        )

    def at_extra_step(self, step: int, out_dir: Path, run) -> None:
        """Work a subclass does at its extra steps (e.g. drawing attention maps)."""

    def on_resume(self, step: int, out_dir: Path) -> None:
        """Drop what a subclass logged after `step` (the checkpoint a run resumes from)."""

    def state_dict(self) -> dict:
        """A plain-data checkpoint: weights, optimizer, step, configs and every RNG state."""
        rng = {
            "torch": torch.get_rng_state(),
            "sampler": self.sampler.generator.get_state(),
            "eval_sampler": self.eval_sampler.generator.get_state(),
        }
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "step": self.step_count,
            "model_config": self.cfg.model.to_dict(),
            "config": utils.config_to_dict(self.cfg),
            "rng": rng,
        }

    def load_state_dict(self, ckpt: dict) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.step_count = int(ckpt["step"])
        rng = ckpt["rng"]
        torch.set_rng_state(rng["torch"].cpu())
        self.sampler.generator.set_state(rng["sampler"].cpu())
        self.eval_sampler.generator.set_state(rng["eval_sampler"].cpu())
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"].cpu(), self.device)


# ----------------------------------------------------------------------------------------------
# Outputs


def summarize(
    records: list[dict], wall_time: float, cfg: TrainConfig, device: str, precision: str
) -> dict:
    """Plateau, drop and final numbers from the logged curve; the heads' roles."""
    steps = [r["step"] for r in records]
    drop = utils.detect_drop(steps, [r["loss"] for r in records])
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
        "device": device,
        "precision": precision,
        "compile": cfg.train.compile,
        "head_roles": role_changes(records),
        "head_numbering": "layer and head 0-based (loss.png labels LiHj 1-based)",
        "role_rule": ROLE_RULE,
        "final_collapse": last.get("collapse"),
        "final_copy_mse": last.get("copy_mse"),
    }


# ----------------------------------------------------------------------------------------------
# The loop


def resume_command(out_dir: Path) -> str:
    """The command line that started this process, with --train.resume=true and the run's
    folder as resolved (a `{overrides}` folder name would otherwise change with the new flag)."""
    drop = ("--train.resume=", "--train.out_dir=")
    args = [a for a in sys.argv[1:] if not a.startswith(drop)]
    extra = [f"--train.out_dir={out_dir}", "--train.resume=true"]
    return shlex.join(["python3", sys.argv[0], *args, *extra])


class Clock:
    """A run's training time, continued across resumes, and its speed between logging steps."""

    def __init__(self, elapsed: float, step: int):
        self.elapsed0, self.start = elapsed, time.perf_counter()
        self.last = (self.start, step)

    def elapsed(self, now: float | None = None) -> float:
        return self.elapsed0 + (time.perf_counter() if now is None else now) - self.start

    def lap(self, step: int, now: float) -> float:
        """Steps per second since the last lap (the last logging step)."""
        rate = (step - self.last[1]) / max(now - self.last[0], 1e-9)
        self.last = (time.perf_counter(), step)
        return rate


@dataclass
class RunLog:
    """Where a logging step's record goes: metrics.jsonl, the records so far, the progress bar
    and the W&B run (None when off)."""

    file: IO[str]
    records: list[dict]
    bar: tqdm
    wandb_run: Any


def log_step(trainer: Trainer, step: int, metrics: dict, clock: Clock, out: RunLog) -> dict:
    """A logging step: the record (the training batch's metrics, eval loss, hidden progress,
    time, speed) appended to metrics.jsonl and the records, shown on the bar and sent to W&B."""
    now = time.perf_counter()
    record, example = trainer.log_record(step, metrics)
    record["time"] = clock.elapsed(now)
    record["steps_per_s"] = clock.lap(step, now)
    out.file.write(json.dumps(record) + "\n")
    out.file.flush()
    out.records.append(record)
    out.bar.set_postfix({k: f"{record[key]:.4g}" for k, key in trainer.bar_keys.items()})
    if trainer.cfg.train.print_example:
        tqdm.write(f"step {step}\n" + utils.format_matrix(*example))
    if out.wandb_run is not None:
        out.wandb_run.log(utils.wandb_record(record), step=step)
    return record


def fit(cfg, trainer: Trainer, out_dir: Path, resume_from: dict | None) -> dict:
    """Run `trainer` to `cfg.train.steps`, logging, checkpointing and summarising into `out_dir`.

    The one training loop: train.py, train_embed.py, bench.py (via `Trainer.step`) and the GPT
    variant (through the Trainer methods it overrides) all run it.
    """
    t = cfg.train
    metrics_path = out_dir / "metrics.jsonl"
    if resume_from:
        trainer.load_state_dict(resume_from)
        print(f"resuming from step {trainer.step_count}")
    # The log holds exactly the steps up to the checkpoint (none for a fresh start).
    records = utils.trim_jsonl(metrics_path, trainer.step_count)
    trainer.on_resume(trainer.step_count, out_dir)
    utils.save_config(cfg, out_dir)
    # group: the folder's name, which the analyses of this run use as their group too
    config = utils.config_to_dict(cfg)
    resuming = bool(resume_from)
    run = utils.init_wandb(
        cfg.wandb, config, out_dir, job_type="train", group=out_dir.name, resuming=resuming
    )
    save_at = set(t.save_steps) | {t.steps}
    # The clock goes on from the checkpoint's time (a run stopped between two logging steps saved
    # later than its last record); older checkpoints hold none: the last record's.
    elapsed = (resume_from or {}).get("elapsed_s", records[-1]["time"] if records else 0.0)
    clock = Clock(float(elapsed), trainer.step_count)
    bar = tqdm(
        total=t.steps, initial=trainer.step_count, desc=cfg.wandb.name, mininterval=1.0, delay=2.0
    )
    with open(metrics_path, "a") as log, utils.stop_requests() as stop, utils.clear_on_error(bar):
        out = RunLog(log, records, bar, run)
        while trainer.step_count < t.steps:
            metrics = trainer.step()
            step = trainer.step_count
            bar.update(1)
            stopping = stop["signal"] is not None
            saving = step in save_at or (t.save_every and step % t.save_every == 0) or stopping
            logging = t.logs_at(step)
            extra = step in trainer.extra_steps
            if not (saving or logging or extra):
                continue
            if bool(trainer.nonfinite):
                kept = max(utils.checkpoints(out_dir), default=None)
                raise UserError(
                    f"loss became non-finite by step {step}; stopped (last good checkpoint: "
                    f"{'step ' + str(kept) if kept is not None else 'none'}); try a lower train.lr"
                )
            if logging:  # before saving, so the checkpoint holds the eval sampler's next state
                log_step(trainer, step, metrics, clock, out)
            if extra:
                trainer.at_extra_step(step, out_dir, run)
            if saving:
                path = out_dir / f"step_{step:06d}.pt"
                utils.save_checkpoint(path, {**trainer.state_dict(), "elapsed_s": clock.elapsed()})
                if run is not None:
                    utils.log_wandb_step(run, cfg.wandb, step, path, trainer.wandb_images(step))
            if stopping:
                break
    bar.leave = stop["signal"] is None  # interrupted: the message below says where it stopped
    utils.close_bar(bar)
    summary = trainer.summarize(records, clock.elapsed(), out_dir)
    utils.write_json(out_dir / "summary.json", summary)
    if records:
        trainer.plot(records, out_dir, summary)
    if run is not None:
        run.summary.update({k: v for k, v in summary.items() if v is not None})
        utils.log_wandb_files(run, out_dir, ["loss.png"])
        run.finish()
    if stop["signal"] is not None:
        raise utils.Interrupted(
            f"{stop['signal']} at step {trainer.step_count}: saved step_{trainer.step_count:06d}"
            f".pt, summary.json and loss.png in {out_dir}; continue with: {resume_command(out_dir)}"
        )
    return summary


def print_summary(summary: dict, out_dir: Path) -> None:
    utils.print_rows(
        [
            ("plateau loss", summary["plateau_loss"]),
            ("drop", utils.describe_drop(summary)),
            ("final loss", summary["final_loss"]),
            ("final L_obs", summary["final_loss_obs"]),
            ("final L_mask", summary["final_loss_mask"]),
            ("steps/s (last interval)", summary["steps_per_s"]),
            ("wall time (s)", summary["wall_time_s"]),
        ]
    )
    print(f"outputs in {out_dir}")


MODEL_TOO_BIG = "lower the model size or the vocabulary (data.prec, data.min_vocab, data.max_vocab)"
BATCH_TOO_BIG = "lower train.batch_size (or train.num_eval)"


def main(cfg: TrainConfig) -> dict:
    utils.choose_device(cfg.train.device)  # a bad device stops the run before any file is touched
    out_dir, resume_from = utils.prepare_run_dir(cfg)
    with utils.allocation_errors(MODEL_TOO_BIG):
        trainer = Trainer(cfg)
    n_params = sum(p.numel() for p in trainer.model.parameters())
    print(
        f"{n_params / 1e6:.2f}M parameters on {trainer.device} ({trainer.precision}); "
        f"writing to {out_dir}"
    )
    with utils.allocation_errors(BATCH_TOO_BIG):
        summary = fit(cfg, trainer, out_dir, resume_from)
    print_summary(summary, out_dir)
    return summary


if __name__ == "__main__":
    utils.cli(main, TrainConfig, __doc__, "configs/train.yaml")
