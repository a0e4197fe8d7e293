"""Where a training step's time goes, by torch.profiler: wall time per step against the time the
device was busy (on a GPU the summed kernel time; on a CPU the summed self CPU time of the ops),
split by class (`op_class`): matmul, attention, elementwise, optimizer (inside
`Optimizer.step`/`zero_grad`), sampler (inside `MatrixSampler.sample`, wrapped here in a
profiler range) and other. bench.py's `--bench.profile`."""

from __future__ import annotations

import contextlib
import re
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, record_function

from utils.device import sync

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


def profile_ours(trainer: Any, steps: int, top: int = 10) -> dict:
    """Run `steps` more steps under torch.profiler: per-step wall time (profiler on), the device's
    busy time and its split by class (ms), host time inside the sampler and optimizer ranges, and
    the `top` kernels/ops by time."""
    cuda = trainer.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with (
        in_range(trainer.sampler, "sample", SAMPLER_RANGE),
        torch.profiler.profile(activities=activities) as prof,
    ):
        sync(trainer.device)
        start = time.perf_counter()
        for _ in range(steps):
            trainer.step()
        sync(trainer.device)
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
