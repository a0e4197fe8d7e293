"""Time train.py's loop against a loop like the authors' on the same config, in one run.

    python3 bench.py --config configs/bench.yaml
    python3 bench.py --config configs/bench.yaml --bench.train_config=configs/train_tiny.yaml

Ours: `train.Trainer.step` exactly as train.py runs it (precision, torch.compile, fused Adam, data
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
the time the device was busy (on a GPU the summed kernel time; on a CPU the summed self CPU time
of the ops, labelled "CPU op time"), split by class (`op_class`): matmul, attention, elementwise,
optimizer (inside `Optimizer.step`/`zero_grad`), sampler (inside `MatrixSampler.sample`, which
the bench wraps in a profiler range) and other.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, record_function
from torch.utils._python_dispatch import TorchDispatchMode

import train
import utils
from data import MatrixSampler
from utils import UserError, opt


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


def flops_per_step(cfg: train.TrainConfig, model: torch.nn.Module) -> float:
    """6 × non-embedding parameters × tokens: forward plus backward matmuls."""
    n = sum(p.numel() for name, p in model.named_parameters() if "embeddings." not in name)
    return 6.0 * n * cfg.train.batch_size * cfg.data.max_tokens


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Loop:
    """A loop to time: one step of it, where it runs, its FLOPs, and the matmuls one step makes
    (what its share of the machine's limit is measured against)."""

    step: Callable[[], None]
    device: torch.device
    flops: float
    matmuls: list[tuple[Any, list[torch.Size], torch.dtype]]
    trainer: train.Trainer | None = None  # ours (what --bench.profile profiles)
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
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        for op, args in inputs:
            op(*args)
    _sync(device)
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
        _sync(loop.device)
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
            _sync(loop.device)
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


def make_ours(cfg: train.TrainConfig, logging: bool = False) -> Loop:
    """`Trainer.step` as train.py runs it (with `logging`, and `Trainer.log_record` every
    `log_every` steps)."""
    trainer = train.Trainer(cfg)
    eager = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, compile=False))
    matmuls = record_matmuls(train.Trainer(eager).step)
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


# ----------------------------------------------------------------------------------------------
# Profiling our step: where the time of a step goes

CLASSES = ("matmul", "attention", "elementwise", "optimizer", "sampler", "other")
SAMPLER_RANGE = "bench.sampler"  # the profiler range around MatrixSampler.sample
# (class, pattern) in order, first match wins, case-insensitive; names are CPU ops (`aten::addmm`),
# autograd nodes, profiler ranges (`Optimizer.step#Adam.step`) and CUDA kernels. Optimizer and
# attention come first because their kernels' names contain "mul" / "cutlass". The explicit
# attention path (bf16 on a CPU) computes scores and output with bmm, which counts as matmul.
_ELEMENTWISE_OPS = (
    "add|sub|rsub|mul|div|neg|pow|sqrt|rsqrt|exp|log|abs|sign|clamp|where|masked_fill|fill|zero|"
    "zeros|zeros_like|ones|ones_like|copy|to_copy|to|clone|contiguous|gelu|relu|tanh|sigmoid|"
    "dropout|native_dropout|mse_loss|sum|mean|square|isfinite|isnan|isinf|bitwise_not|bitwise_or|"
    "logical_not|eq|ne|lt|gt|le|ge|maximum|minimum|lerp|addcmul|addcdiv"
)
_CLASS_PATTERNS = tuple(
    (cls, re.compile(pattern, re.IGNORECASE))
    for cls, pattern in (
        ("sampler", rf"^{re.escape(SAMPLER_RANGE)}$"),
        ("optimizer", r"^optimizer\.|adam|_foreach_|multi_tensor_apply"),
        ("attention", r"scaled_dot_product|attention|flash|fmha|softmax"),
        (
            "matmul",
            r"^aten::_?(mm|addmm|bmm|baddbmm|matmul|linear|addmm_activation|scaled_mm)$"
            r"|gemm|gemv|cutlass|cublas|xmma|mmbackward|triton_tem_",
        ),
        (
            "elementwise",
            rf"^aten::_?({_ELEMENTWISE_OPS})(_|_backward)?$"
            r"|elementwise|reduce_kernel|layer_?norm|gelu|triton_(poi|red|per)_|memcpy|memset",
        ),
    )
)
# Classes that claim everything inside them (the kernels an optimizer step or a sampler launches,
# the bmm of a math-path SDPA); the others describe one op or kernel by itself.
_RANGE_CLASSES = ("sampler", "optimizer", "attention")


def op_class(name: str) -> str:
    """The class of one CPU op, autograd node, profiler range or CUDA kernel name."""
    return next((cls for cls, pattern in _CLASS_PATTERNS if pattern.search(name)), "other")


def attribute(chain: list[str]) -> str:
    """The class of a piece of work, from its names innermost first: a kernel (on a GPU), the op
    that ran or launched it, then that op's enclosing ops and ranges. The outermost range class
    (sampler, optimizer, attention) wins; otherwise the innermost name with a class does (an
    allocation inside `aten::_to_copy` is elementwise, an unknown kernel takes its op's class)."""
    classes = [op_class(name) for name in chain]
    ranged = [c for c in classes if c in _RANGE_CLASSES]
    if ranged:
        return ranged[-1]
    return next((c for c in classes if c != "other"), "other")


def _names_up(event) -> list[str]:
    """The event's name, then those of its enclosing CPU events (same thread), innermost first."""
    names = []
    while event is not None:
        names.append(event.name)
        event = event.cpu_parent
    return names


def _host_work(events) -> Iterator[tuple[list[str], float]]:
    """(names, µs) of each CPU op's self time; ranges (record_function) are not ops, and their
    self time is Python between ops, left in wall − busy."""
    for e in events:
        if e.device_type == DeviceType.CPU and not e.is_user_annotation:
            yield _names_up(e), e.self_cpu_time_total


def _device_work(events) -> Iterator[tuple[list[str], float]]:
    """(names, µs) of each GPU kernel: its name, then the op that launched it and that op's
    enclosing ones. NOT YET RUN ON A GPU (written against torch 2.13's profiler_util).

    A range also appears on the GPU timeline as a span (gpu_user_annotation, a device event with
    `is_user_annotation`) that the profiler may list among the range's kernels: skipped here.
    """
    spans = Counter(
        (e.name, e.device_time_total)
        for e in events
        if e.device_type != DeviceType.CPU and e.is_user_annotation
    )
    for e in events:
        if e.device_type != DeviceType.CPU:
            continue
        for k in e.kernels:
            if spans[(k.name, k.duration)] > 0:
                spans[(k.name, k.duration)] -= 1
                continue
            yield [k.name, *_names_up(e)], k.duration


def breakdown(work: Iterable[tuple[list[str], float]]) -> tuple[dict, dict]:
    """({class: µs}, {(innermost name, class): µs}) of (names, µs) pieces of work."""
    by_class, by_name = dict.fromkeys(CLASSES, 0.0), defaultdict(float)
    for names, us in work:
        cls = attribute(names)
        by_class[cls] += us
        by_name[names[0], cls] += us
    return by_class, dict(by_name)


@contextlib.contextmanager
def in_range(obj, method: str, name: str) -> Iterator[None]:
    """While inside, `obj.<method>` runs inside a profiler range `name` (an instance attribute
    shadows the class's method, and is removed on leaving)."""
    inner = getattr(obj, method)

    def wrapped(*args, **kwargs):
        with record_function(name):
            return inner(*args, **kwargs)

    setattr(obj, method, wrapped)
    try:
        yield
    finally:
        delattr(obj, method)


def profile_ours(trainer: train.Trainer, steps: int, top: int = 10) -> dict:
    """Run `steps` more steps under torch.profiler: per-step wall time (profiler on), the device's
    busy time and its split by class (ms), host time inside the sampler and optimizer ranges, and
    the `top` kernels/ops by time."""
    cuda = trainer.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with (
        in_range(trainer.sampler, "sample", SAMPLER_RANGE),
        torch.profiler.profile(activities=activities) as prof,
    ):
        _sync(trainer.device)
        start = time.perf_counter()
        for _ in range(steps):
            trainer.step()
        _sync(trainer.device)
        wall_ms = (time.perf_counter() - start) * 1e3 / steps
    events = prof.events()
    by_class, by_name = breakdown(_device_work(events) if cuda else _host_work(events))
    busy = sum(by_class.values())
    unlinked = None
    if cuda:  # busy as torch's own table totals it; should equal the kernels linked to an op
        busy = sum(
            e.self_device_time_total
            for e in events
            if e.device_type != DeviceType.CPU and not e.is_user_annotation
        )
        unlinked = (busy - sum(by_class.values())) * 1e-3 / steps
    ranges = defaultdict(float)
    for e in events:
        if e.device_type == DeviceType.CPU and e.is_user_annotation:
            if (cls := op_class(e.name)) in ("sampler", "optimizer"):
                ranges[cls] += e.cpu_time_total
    ms = 1e-3 / steps  # µs over all steps -> ms per step
    return {
        "steps": steps,
        "busy_is": "GPU kernel time" if cuda else "CPU op time (self CPU time of the ops)",
        "wall_ms_per_step": wall_ms,
        "busy_ms_per_step": busy * ms,
        "busy_share_of_wall": busy * ms / wall_ms,
        "unlinked_kernel_ms_per_step": unlinked,  # GPU only: busy minus the classes' sum
        "ms_per_step": {cls: us * ms for cls, us in by_class.items()},
        "range_host_ms_per_step": {cls: ranges[cls] * ms for cls in ("sampler", "optimizer")},
        "top": [
            {"name": name, "class": cls, "ms_per_step": us * ms}
            for (name, cls), us in sorted(by_name.items(), key=lambda kv: -kv[1])[:top]
        ],
    }


def profile_table(name: str, p: dict, steps_per_s: float) -> str:
    """A few lines for the terminal: wall vs busy, then the classes."""
    busy = p["busy_ms_per_step"]
    lines = [
        f"profile of {name}, {p['steps']} steps; busy = {p['busy_is']}",
        f"  wall {p['wall_ms_per_step']:.2f} ms/step with the profiler on "
        f"({1e3 / steps_per_s:.2f} ms/step timed without it); busy {busy:.2f} ms/step "
        f"({p['busy_share_of_wall']:.0%} of the wall)",
        f"  {'class':<12} {'ms/step':>8} {'of busy':>8}",
    ]
    for cls, value in p["ms_per_step"].items():
        lines.append(f"  {cls:<12} {value:8.2f} {value / busy if busy else 0:8.0%}")
    if p["unlinked_kernel_ms_per_step"] is not None:
        lines.append(f"  {'unlinked':<12} {p['unlinked_kernel_ms_per_step']:8.2f}  (kernels)")
    host = ", ".join(f"{k} {v:.2f}" for k, v in p["range_host_ms_per_step"].items())
    lines.append(f"  host time inside the ranges (ms/step): {host}")
    return "\n".join(lines)


def make_baseline(cfg: train.TrainConfig, stack: contextlib.ExitStack) -> Loop:
    """The authors' loop, reproduced for timing: HF BertModel, fp32, eager attention. Its
    printed lines go to /dev/null, closed when `stack` closes."""
    transformers = _transformers()
    device = utils.choose_device(cfg.train.device)
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
    out_dir = utils.resolve_path(path)
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
    plt = utils.pyplot()
    runs = summary["runs"]
    names = list(runs)
    with plt.rc_context(utils.plot_style()):
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
    base_path = utils.resolve_path(b.train_config)
    tcfg = utils.load_config(train.TrainConfig, base_path, b.overrides)
    variants = {
        v: utils.load_config(train.TrainConfig, base_path, b.overrides + v.split())
        for v in b.variants
    }
    device = utils.choose_device(tcfg.train.device)
    for vcfg in variants.values():
        utils.choose_device(vcfg.train.device)
    if b.baseline:
        _transformers()
    out_dir = prepare_out_dir(b.out_dir)
    utils.save_config(cfg, out_dir)
    precision = utils.resolve_precision(tcfg.train.precision, device)
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
        "tflop_per_step": flops_per_step(tcfg, train.MatrixBert(tcfg.model)) / 1e12,
        "runs": runs,
    }
    if b.baseline:
        summary["speedup"] = (
            runs[label]["steps_per_s"] / runs["baseline (authors'-style loop)"]["steps_per_s"]
        )
    fig = plot_runs(summary)
    utils.save_figure(fig, out_dir, "bench")
    utils.close_figure(fig)
    utils.write_json(out_dir / "summary.json", summary)
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
    utils.cli(main, BenchConfig, __doc__, "configs/bench.yaml")
