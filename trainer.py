"""The training machinery every run shares: the `train` config section, the Trainer (model, Adam,
samplers, precision, compile, one step, checkpoint state) and `fit`, the one training loop.

train.py, train_embed.py, bench.py and the GPT variant (src/gpt/train.py) all train through
this module; what differs between them is their `task` (task.py: the loss, the evaluation, the
hidden-progress measures, the summary and figures), never the loop. `fit`'s phases: sample and
step; on logging steps log (metrics.jsonl, the bar, W&B) and measure (the task's progress);
save checkpoints; stop on the last step or on Ctrl-C / SIGTERM (after saving); then summarise.
"""

from __future__ import annotations

import contextlib
import json
import math
import shlex
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch
from tqdm import tqdm

from data import DataConfig, MatrixSampler
from model import MatrixBert, check_fits
from modeling_bert import BertConfig
from task import MatrixCompletion, Task
from utils.config import UserError, config_to_dict, opt
from utils.device import choose_device, resolve_precision, seed_everything
from utils.files import write_json
from utils.floats import to_floats, to_lists
from utils.results import save_config
from utils.runs import checkpoints, save_checkpoint, trim_jsonl
from utils.signals import Interrupted, stop_requests
from utils.tracking import (
    TrainWandbConfig,
    init_wandb,
    log_wandb_files,
    log_wandb_step,
    wandb_record,
)

PRECISIONS = ("auto", "fp32", "tf32", "bf16")
LR_SCHEDULES = ("constant", "cosine", "wsd")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")
EARLY_LOGS = 8  # extra logs within the first log_every steps (see TrainSection.logs_at)
# What an allocation error says to lower: building the model, or running the loop.
MODEL_TOO_BIG = "lower the model size or the vocabulary (data.prec, data.min_vocab, data.max_vocab)"
BATCH_TOO_BIG = "lower train.batch_size (or train.num_eval)"


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
# The machinery


class Trainer:
    """The machinery every run shares: model, Adam, samplers, precision, compile, `step()` and the
    checkpoint state. What is trained on and measured is the `task` (task.py): the BERT's
    MatrixCompletion by default. `params` limits what Adam updates (default: every parameter
    that requires a gradient)."""

    def __init__(
        self,
        cfg: TrainConfig,
        task: type[Task] = MatrixCompletion,
        model: torch.nn.Module | None = None,
        params: list[torch.nn.Parameter] | None = None,
    ):
        t = cfg.train
        self.cfg = cfg
        self.device = choose_device(t.device)
        seed_everything(t.seed)
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
        self.precision = resolve_precision(t.precision, self.device)
        # TF32 matmuls only when asked: fp32 means full fp32 (PyTorch's default is the same).
        torch.set_float32_matmul_precision("high" if self.precision == "tf32" else "highest")
        self.autocast_dtype = torch.bfloat16 if self.precision == "bf16" else None
        self.task = task(self)
        self.loss_fn = self.task.loss
        cuda = self.device.type == "cuda"
        self.cudagraphs = t.compile and t.compile_mode == "reduce-overhead" and cuda
        if t.compile:
            self.loss_fn = torch.compile(self.task.loss, mode=t.compile_mode)
        self.step_count = 0
        self.nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

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

    def log_record(self, step: int, metrics: dict) -> tuple[dict, tuple]:
        """What a logging step records: the training batch's `metrics` and the task's eval
        metrics as Python numbers (one host sync), the lr, the task's hidden-progress measures,
        and the eval example."""
        evaluated, example = self.task.evaluate()
        record = {"step": step, **to_floats({**metrics, **evaluated})}
        record["lr"] = self.optimizer.param_groups[0]["lr"]
        record.update(to_lists(self.task.measure_progress()))
        record.update(self.task.derived(record))
        return record, example

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
            "config": config_to_dict(self.cfg),
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
    out.bar.set_postfix({k: f"{record[key]:.4g}" for k, key in trainer.task.bar_keys.items()})
    if trainer.cfg.train.print_example:
        tqdm.write(f"step {step}\n" + format_matrix(*example))
    if out.wandb_run is not None:
        out.wandb_run.log(wandb_record(record), step=step)
    return record


def fit(cfg, trainer: Trainer, out_dir: Path, resume_from: dict | None) -> dict:
    """Run `trainer` to `cfg.train.steps`, logging, checkpointing and summarising into `out_dir`:
    the one training loop (train.py, train_embed.py and the GPT variant run it)."""
    t, task = cfg.train, trainer.task
    metrics_path = out_dir / "metrics.jsonl"
    if resume_from:
        trainer.load_state_dict(resume_from)
        print(f"resuming from step {trainer.step_count}")
    # The log holds exactly the steps up to the checkpoint (none for a fresh start).
    records = trim_jsonl(metrics_path, trainer.step_count)
    task.on_resume(trainer.step_count, out_dir)
    save_config(cfg, out_dir)
    # group: the folder's name, which the analyses of this run use as their group too
    run = init_wandb(
        cfg.wandb,
        config_to_dict(cfg),
        out_dir,
        job_type="train",
        group=out_dir.name,
        resuming=bool(resume_from),
    )
    save_at = set(t.save_steps) | {t.steps}
    # The clock goes on from the checkpoint's time (a run stopped between two logging steps saved
    # later than its last record); older checkpoints hold none: the last record's.
    elapsed = (resume_from or {}).get("elapsed_s", records[-1]["time"] if records else 0.0)
    clock = Clock(float(elapsed), trainer.step_count)
    bar = tqdm(
        total=t.steps, initial=trainer.step_count, desc=cfg.wandb.name, mininterval=1.0, delay=2.0
    )
    with open(metrics_path, "a") as log, stop_requests() as stop, clear_on_error(bar):
        out = RunLog(log, records, bar, run)
        while trainer.step_count < t.steps:
            # Sample and step: a fresh batch, one Adam update; no host sync.
            metrics = trainer.step()
            step = trainer.step_count
            bar.update(1)
            stopping = stop["signal"] is not None
            saving = step in save_at or (t.save_every and step % t.save_every == 0) or stopping
            logging = t.logs_at(step)
            extra = step in task.extra_steps
            if not (saving or logging or extra):
                continue
            # Check: a non-finite loss stops the run before anything is logged or saved.
            if bool(trainer.nonfinite):
                kept = max(checkpoints(out_dir), default=None)
                raise UserError(
                    f"loss became non-finite by step {step}; stopped (last good checkpoint: "
                    f"{'step ' + str(kept) if kept is not None else 'none'}); try a lower train.lr"
                )
            # Log and measure: losses, eval, the task's hidden progress (one host sync); before
            # saving, so the checkpoint holds the eval sampler's next state.
            if logging:
                log_step(trainer, step, metrics, clock, out)
            # The task's own steps (the GPT's attention maps).
            if extra:
                task.at_extra_step(step, out_dir, run)
            # Save: an atomic, plain-data checkpoint (and its W&B images).
            if saving:
                path = out_dir / f"step_{step:06d}.pt"
                save_checkpoint(path, {**trainer.state_dict(), "elapsed_s": clock.elapsed()})
                if run is not None:
                    log_wandb_step(run, cfg.wandb, step, path, task.wandb_images(step))
            # Stop: Ctrl-C or SIGTERM, after the checkpoint above.
            if stopping:
                break
    # Summarise: summary.json, loss.png, the W&B run's summary; then say how to resume.
    bar.leave = stop["signal"] is None  # interrupted: the message below says where it stopped
    close_bar(bar)
    summary = task.summarize(records, clock.elapsed(), out_dir)
    write_json(out_dir / "summary.json", summary)
    if records:
        task.plot(records, out_dir, summary)
    if run is not None:
        run.summary.update({k: v for k, v in summary.items() if v is not None})
        log_wandb_files(run, out_dir, ["loss.png"])
        run.finish()
    if stop["signal"] is not None:
        raise Interrupted(
            f"{stop['signal']} at step {trainer.step_count}: saved step_{trainer.step_count:06d}"
            f".pt, summary.json and loss.png in {out_dir}; continue with: {resume_command(out_dir)}"
        )
    return summary


# ----------------------------------------------------------------------------------------------
# The terminal: a progress bar that leaves no debris, an example matrix


@contextlib.contextmanager
def clear_on_error(bar: Any) -> Iterator[None]:
    """Wipe the progress bar when the loop fails, so the error is the one line left."""
    try:
        yield
    except BaseException:
        bar.leave = False
        close_bar(bar)
        raise


def close_bar(bar: Any) -> None:
    """Close the bar; in a log file (not a terminal) end its last line, so that what is
    printed next starts a line of its own."""
    shown = bar.n > bar.initial or bar.last_print_n > bar.initial
    bar.close()
    if shown and not sys.stderr.isatty():
        sys.stderr.write("\n")


def format_matrix(pred: torch.Tensor, target: torch.Tensor, observed: torch.Tensor) -> str:
    """Predicted matrix beside the truth; hidden entries marked with '*'."""
    rows = []
    for i in range(target.shape[0]):
        p = " ".join(
            f"{v:6.2f}{' ' if o else '*'}" for v, o in zip(pred[i].tolist(), observed[i].tolist())
        )
        t = " ".join(f"{v:6.2f}" for v in target[i].tolist())
        rows.append(f"  {p} | {t}")
    return "  prediction (* = hidden) | truth\n" + "\n".join(rows)
