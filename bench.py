"""Time train.py's loop against a loop like the authors' on the same config, in one run.

    python3 bench.py --config configs/bench.yaml
    python3 bench.py --config configs/bench.yaml --bench.train_config=configs/train_tiny.yaml

Ours: `Trainer.step` exactly as train.py runs it (precision, torch.compile, fused Adam, data
drawn on the device, no host sync between logging steps). Baseline, as the authors' loop does
every step: transformers' `BertModel` with eager attention in fp32, a training step, then a second
forward pass in eval mode, the four logged losses each read with `.item()`, an eval batch of
`num_eval` matrices, and a printed line (sent to /dev/null here so the terminal stays readable).
Both draw fresh batches from the same sampler. Prints steps/s of each, the ratio, achieved TFLOP/s
(6 × non-embedding parameters × tokens per step) and peak device memory; writes `summary.json`.
It refuses an `out_dir` that already holds a summary.json.

The machine's limit is measured in the same call, at each loop's own matmuls: the matmuls one
step makes (recorded, forward and backward, with their shapes and dtype) are run alone, back to
back, and `share_of_limit` is the time they take over the time of a whole step (1.0: a step that
is nothing but its matmuls at full speed). Loops and limits are timed in `rounds` interleaved
rounds and the medians reported, so a machine whose speed drifts (a shared host: a 2048² matmul
here ran anywhere from 110 to 157 GFLOP/s in one minute) slows all of them alike.

With `--bench.profile=true` each of our loops is then run for `profile_steps` more steps under
torch.profiler, and the run's entry in summary.json gets a `profile`: wall time per step against
the time the device was busy, split by class (utils/profiling.py; on a CPU the busy time is the
ops' self CPU time, labelled "CPU op time").
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from data import MatrixSampler
from model import MatrixBert
from trainer import TrainConfig, Trainer
from utils.config import UserError, cli, load_config, opt, resolve_path
from utils.device import choose_device, resolve_precision, sync
from utils.files import write_json
from utils.plots import close_figure, plot_style, pyplot, save_figure
from utils.profiling import profile_ours, profile_table
from utils.results import save_config


@dataclass
class BenchSection:
    train_config: str = opt("configs/train.yaml", "the training config to time")
    overrides: list[str] = opt([], "section.key=value overrides for that config")
    variants: list[str] = opt(
        [], "extra runs of our loop, each a space-separated list of overrides (labelled by it)"
    )
    warmup_steps: int = opt(30, "untimed steps first (torch.compile happens here)")
    steps: int = opt(200, "timed steps per loop, in `rounds` rounds")
    rounds: int = opt(
        3,
        "interleaved rounds (at most bench.steps): every loop, then its own matmuls alone (the "
        "limit), in turn; medians are reported",
        since="2026-12-03",
    )
    baseline: bool = opt(True, "also time the authors'-style loop (needs transformers)")
    profile: bool = opt(
        False, "then profile our loops: wall vs device-busy time per step, by kernel/op class"
    )
    profile_steps: int = opt(10, "steps profiled per loop (bench.profile), after the timed ones")
    logging: bool = opt(
        False,
        "also time train.py's logging steps (eval loss, hidden progress) every train.log_every "
        "steps, as train.py runs them",
    )
    out_dir: str = opt("results/bench", "output folder (one that holds a summary.json is refused)")

    def __post_init__(self) -> None:
        if self.steps < 1 or self.warmup_steps < 0 or self.profile_steps < 1:
            raise UserError(
                "'bench.steps' and 'bench.profile_steps' must be ≥ 1, 'bench.warmup_steps' ≥ 0"
            )
        if self.rounds < 1:
            raise UserError(f"'bench.rounds' must be ≥ 1, got {self.rounds}")


@dataclass
class BenchConfig:
    bench: BenchSection = field(default_factory=BenchSection)


def flops_per_step(cfg: TrainConfig, model: torch.nn.Module) -> float:
    """6 × non-embedding parameters × tokens: forward plus backward matmuls."""
    n = sum(p.numel() for name, p in model.named_parameters() if "embeddings." not in name)
    return 6.0 * n * cfg.train.batch_size * cfg.data.max_tokens


@dataclass
class Loop:
    """A loop to time: one step of it, where it runs, its FLOPs, and the matmuls one step makes
    (what its share of the machine's limit is measured against)."""

    step: Callable[[], None]
    device: torch.device
    flops: float
    matmuls: list[tuple[Any, list[torch.Size], torch.dtype]]
    trainer: Trainer | None = None  # ours (what --bench.profile profiles)
    log_seconds: list[float] = field(default_factory=list)  # each logging step's extra work


MATMUL_OPS = ("mm", "addmm", "bmm", "baddbmm")


class _MatmulRecorder(TorchDispatchMode):
    """Records (op, input shapes, dtype) of every matmul that runs inside it, backward included."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[Any, list[torch.Size], torch.dtype]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in MATMUL_OPS:
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            self.seen.append((func, [t.shape for t in tensors], tensors[-1].dtype))
        return func(*args, **(kwargs or {}))


def record_matmuls(step: Callable[[], None]) -> list[tuple[Any, list[torch.Size], torch.dtype]]:
    """The matmuls one call of `step` makes (run it eagerly: compiled code hides its ops)."""
    with _MatmulRecorder() as recorder:
        step()
    return recorder.seen


def matmul_seconds(matmuls: list, device: torch.device, repeats: int) -> float:
    """Seconds the matmuls of one step take run back to back on fresh inputs of their shapes
    and dtype, mean over `repeats`: the machine's limit at the loop's own shapes."""
    inputs = [
        (op, [torch.randn(shape, device=device, dtype=dtype) for shape in shapes])
        for op, shapes, dtype in matmuls
    ]
    for op, args in inputs:  # warm
        op(*args)
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        for op, args in inputs:
            op(*args)
    sync(device)
    return (time.perf_counter() - start) / repeats


def matmul_flops(matmuls: list) -> float:
    """FLOPs of the recorded matmuls: 2·m·k·n each (a bias add or a batch counts as torch's)."""
    total = 0.0
    for _, shapes, _ in matmuls:
        a, b = shapes[-2], shapes[-1]
        total += 2.0 * math.prod(a) * b[-1]
    return total


def time_rounds(loops: dict[str, Loop], warmup: int, steps: int, rounds: int) -> dict:
    """Time every loop in `rounds` interleaved rounds of `steps // rounds` steps, each round
    also timing each loop's own matmuls alone (the limit); report medians over rounds. On a
    machine whose speed drifts (a shared host, a thermal limit) the drift hits every loop and
    its limit alike, so the ratios hold where one long timing per loop would not."""
    rounds = min(rounds, steps)
    per_round = steps // rounds
    for loop in loops.values():
        for _ in range(warmup):
            loop.step()
        sync(loop.device)
        loop.log_seconds.clear()
    if any(loop.device.type == "cuda" for loop in loops.values()):
        torch.cuda.reset_peak_memory_stats()
    seconds = {name: [] for name in loops}
    limits = {name: [] for name in loops}
    for _ in range(rounds):
        for name, loop in loops.items():
            start = time.perf_counter()
            for _ in range(per_round):
                loop.step()
            sync(loop.device)
            seconds[name].append((time.perf_counter() - start) / per_round)
            limits[name].append(matmul_seconds(loop.matmuls, loop.device, min(per_round, 20)))
    results = {}
    for name, loop in loops.items():
        step_s, limit_s = statistics.median(seconds[name]), statistics.median(limits[name])
        cuda = loop.device.type == "cuda"
        result = {
            "steps_per_s": 1.0 / step_s,
            "steps_per_s_rounds": [1.0 / x for x in seconds[name]],
            "seconds": sum(seconds[name]) * per_round,
            "tflops": loop.flops / step_s / 1e12,
            "matmul_ms_per_step": 1e3 * limit_s,
            "matmul_limit_tflops": matmul_flops(loop.matmuls) / limit_s / 1e12,
            # the share of a step the step's own matmuls would take at the machine's limit
            "share_of_limit": statistics.median(
                [lim / sec for lim, sec in zip(limits[name], seconds[name])]
            ),
            "peak_mem_gib": torch.cuda.max_memory_allocated(loop.device) / 2**30 if cuda else None,
        }
        if loop.trainer is not None and loop.trainer.cfg.train.log_every and loop.log_seconds:
            timed = loop.log_seconds
            result["log_ms"] = 1e3 * sum(timed) / len(timed)
            result["log_share"] = sum(timed) / result["seconds"]
        results[name] = result
    return results


def make_ours(cfg: TrainConfig, logging: bool = False) -> Loop:
    """`Trainer.step` as train.py runs it (with `logging`, and `Trainer.log_record` every
    `log_every` steps)."""
    trainer = Trainer(cfg)
    eager = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, compile=False))
    matmuls = record_matmuls(Trainer(eager).step)
    loop = Loop(
        step=lambda: None,
        device=trainer.device,
        flops=flops_per_step(cfg, trainer.model),
        matmuls=matmuls,
        trainer=trainer,
    )

    def step():
        metrics = trainer.step()
        if logging and trainer.step_count % cfg.train.log_every == 0:
            start = time.perf_counter()
            trainer.log_record(trainer.step_count, metrics)
            loop.log_seconds.append(time.perf_counter() - start)

    loop.step = step
    return loop


def make_baseline(cfg: TrainConfig, stack: contextlib.ExitStack) -> Loop:
    """The authors' loop, reproduced for timing: HF BertModel, fp32, eager attention. Its
    printed lines go to /dev/null, closed when `stack` closes."""
    transformers = _transformers()
    device = choose_device(cfg.train.device)
    m = cfg.model
    hf_cfg = transformers.BertConfig(
        vocab_size=m.vocab_size,
        hidden_size=m.hidden_size,
        num_hidden_layers=m.num_hidden_layers,
        num_attention_heads=m.num_attention_heads,
        intermediate_size=m.intermediate_size,
        max_position_embeddings=m.max_position_embeddings,
        hidden_dropout_prob=m.hidden_dropout_prob,
        attention_probs_dropout_prob=m.attention_probs_dropout_prob,
        attn_implementation="eager",
    )
    torch.set_float32_matmul_precision("highest")  # fp32 matmuls, as the authors ran
    backbone = transformers.BertModel(hf_cfg, add_pooling_layer=False).to(device)
    read_out = torch.nn.Linear(m.hidden_size, 1).to(device)
    params = list(backbone.parameters()) + list(read_out.parameters())
    optimizer = torch.optim.Adam(params, lr=cfg.train.lr)
    sampler = MatrixSampler(cfg.data, device, seed=cfg.train.seed)
    mse = torch.nn.functional.mse_loss
    devnull = stack.enter_context(open(os.devnull, "w"))

    def forward(ids):
        return read_out(backbone(input_ids=ids).last_hidden_state).squeeze(-1)

    def step():
        batch = sampler.sample(cfg.train.batch_size)
        backbone.train()
        optimizer.zero_grad()
        loss = mse(forward(batch.input_ids), batch.target)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            backbone.eval()
            out = forward(batch.input_ids)
            hid = ~batch.observed
            logged = [
                mse(out, batch.target).item(),
                mse(out[hid], batch.target[hid]).item(),
                mse(out[~hid], batch.target[~hid]).item(),
                out[hid].abs().mean().item(),
            ]
            ev = sampler.sample(cfg.train.num_eval)
            logged.append(mse(forward(ev.input_ids), ev.target).item())
            print(*logged, file=devnull)

    model_like = torch.nn.ModuleDict({"backbone": backbone, "read_out": read_out})
    return Loop(step, device, flops_per_step(cfg, model_like), record_matmuls(step))


def _transformers():
    try:
        import transformers
    except ImportError:
        raise UserError("bench.baseline needs transformers (pip install transformers)") from None
    return transformers


def prepare_out_dir(path: str) -> Path:
    """The output folder, created; one that holds a bench's summary.json is refused."""
    out_dir = resolve_path(path)
    if (out_dir / "summary.json").exists():
        raise UserError(
            f"{out_dir} already holds a summary.json; choose another --bench.out_dir "
            "(nothing was overwritten)"
        )
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"'bench.out_dir' {out_dir} is a file, not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def plot_runs(summary: dict) -> Any:
    """bench.png: steps/s of every loop timed, side by side, with the share of the time spent in
    logging steps where it was timed (bench.logging)."""
    plt = pyplot()
    runs = summary["runs"]
    names = list(runs)
    with plt.rc_context(plot_style()):
        fig, ax = plt.subplots(figsize=(7.5, 0.55 * len(names) + 1.6), layout="constrained")
        rates = [runs[k]["steps_per_s"] for k in names]
        bars = ax.barh(range(len(names)), rates, color="tab:blue")
        for bar, k in zip(bars, names):
            share = runs[k].get("log_share")
            text = f" {runs[k]['steps_per_s']:.2f}" + (
                f"  (logging {share:.1%} of the time)" if share is not None else ""
            )
            ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, text, va="center")
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, max(rates) * 1.45)
        ax.set_xlabel("optimizer steps per second (higher is faster)")
        ax.set_title(
            f"{summary['train_config']} on {summary['device']} "
            f"({summary.get('cpu_threads')} CPU threads)",
            fontsize=9,
        )
    return fig


def main(cfg: BenchConfig) -> dict:
    b = cfg.bench
    # Every input is checked before anything is written or timed.
    base_path = resolve_path(b.train_config)
    tcfg = load_config(TrainConfig, base_path, b.overrides)
    variants = {v: load_config(TrainConfig, base_path, b.overrides + v.split()) for v in b.variants}
    device = choose_device(tcfg.train.device)
    for vcfg in variants.values():
        choose_device(vcfg.train.device)
    if b.baseline:
        _transformers()
    out_dir = prepare_out_dir(b.out_dir)
    save_config(cfg, out_dir)
    precision = resolve_precision(tcfg.train.precision, device)
    label = f"ours ({precision}, compile={tcfg.train.compile})"
    loops = {label: make_ours(tcfg, b.logging)}
    for variant, vcfg in variants.items():
        loops[f"ours [{variant}]"] = make_ours(vcfg, b.logging)
    with contextlib.ExitStack() as stack:
        if b.baseline:
            loops["baseline (authors'-style loop)"] = make_baseline(tcfg, stack)
        runs = time_rounds(loops, b.warmup_steps, b.steps, b.rounds)
    if b.profile:
        for name, loop in loops.items():
            if loop.trainer is not None:
                runs[name]["profile"] = profile_ours(loop.trainer, b.profile_steps)
    summary = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "train_config": str(b.train_config),
        "overrides": b.overrides,
        "tflop_per_step": flops_per_step(tcfg, MatrixBert(tcfg.model)) / 1e12,
        "runs": runs,
    }
    if b.baseline:
        summary["speedup"] = (
            runs[label]["steps_per_s"] / runs["baseline (authors'-style loop)"]["steps_per_s"]
        )
    fig = plot_runs(summary)
    save_figure(fig, out_dir, "bench")
    close_figure(fig)
    write_json(out_dir / "summary.json", summary)
    width = max(len(k) for k in runs)
    print(
        f"{summary['device']}, {summary['tflop_per_step']:.3f} TFLOP per step; medians of "
        f"{b.rounds} interleaved rounds"
    )
    for name, r in runs.items():
        mem = f"{r['peak_mem_gib']:.2f} GiB" if r["peak_mem_gib"] is not None else "—"
        rate = (
            f"{r['steps_per_s']:8.2f} steps/s  {r['tflops']:7.3f} TFLOP/s  "
            f"{r['share_of_limit']:4.0%} of the limit ({r['matmul_limit_tflops']:.3f} TFLOP/s "
            "at its own matmuls)"
        )
        logs = ""
        if r.get("log_share") is not None:
            logs = f"  logging: {r['log_ms']:.1f} ms per log step, {r['log_share']:.2%} of the time"
        print(f"{name:<{width}}  {rate}  {mem}{logs}")
    if b.baseline:
        print(f"speed-up over the baseline: {summary['speedup']:.2f}×")
    for name, r in runs.items():
        if "profile" in r:
            print(profile_table(name, r["profile"], r["steps_per_s"]))
    print(f"written to {out_dir / 'summary.json'}")
    return summary


if __name__ == "__main__":
    cli(main, BenchConfig, __doc__, "configs/bench.yaml")
