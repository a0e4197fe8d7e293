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
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field

import torch

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
    steps: int = opt(200, "timed steps per loop")
    baseline: bool = opt(True, "also time the authors'-style loop (needs transformers)")
    out_dir: str = opt("results/bench", "output folder")

    def __post_init__(self) -> None:
        if self.steps < 1 or self.warmup_steps < 0:
            raise UserError("'bench.steps' must be ≥ 1 and 'bench.warmup_steps' ≥ 0")


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


def _timed(step_fn, device: torch.device, warmup: int, steps: int) -> dict:
    for _ in range(warmup):
        step_fn()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        step_fn()
    _sync(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"steps_per_s": steps / seconds, "seconds": seconds, "peak_mem_gib": peak}


def time_ours(cfg: train.TrainConfig, warmup: int, steps: int) -> dict:
    trainer = train.Trainer(cfg)

    def step():
        trainer.step()

    result = _timed(step, trainer.device, warmup, steps)
    result["tflops"] = flops_per_step(cfg, trainer.model) * result["steps_per_s"] / 1e12
    return result


def time_baseline(cfg: train.TrainConfig, warmup: int, steps: int) -> dict:
    """The authors' loop, reproduced for timing: HF BertModel, fp32, eager attention."""
    try:
        import transformers
    except ImportError:
        raise UserError("bench.baseline needs transformers (pip install transformers)") from None
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
    devnull = open(os.devnull, "w")  # noqa: SIM115  closed below

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

    with contextlib.closing(devnull):
        result = _timed(step, device, min(3, steps), steps)
    model_like = torch.nn.ModuleDict({"backbone": backbone, "read_out": read_out})
    result["tflops"] = flops_per_step(cfg, model_like) * result["steps_per_s"] / 1e12
    return result


def main(cfg: BenchConfig) -> dict:
    b = cfg.bench
    base_path = utils.resolve_path(b.train_config)
    tcfg = utils.load_config(train.TrainConfig, base_path, b.overrides)
    device = utils.choose_device(tcfg.train.device)
    out_dir = utils.resolve_path(b.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    utils.save_config(cfg, out_dir)
    label = f"ours ({tcfg.train.precision}, compile={tcfg.train.compile})"
    runs = {label: time_ours(tcfg, b.warmup_steps, b.steps)}
    for variant in b.variants:
        vcfg = utils.load_config(train.TrainConfig, base_path, b.overrides + variant.split())
        runs[f"ours [{variant}]"] = time_ours(vcfg, b.warmup_steps, b.steps)
    if b.baseline:
        runs["baseline (authors'-style loop)"] = time_baseline(tcfg, b.warmup_steps, b.steps)
    summary = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
        "torch": torch.__version__,
        "train_config": str(b.train_config),
        "overrides": b.overrides,
        "tflop_per_step": flops_per_step(tcfg, train.MatrixBert(tcfg.model)) / 1e12,
        "runs": runs,
    }
    if b.baseline:
        summary["speedup"] = (
            runs[label]["steps_per_s"] / runs["baseline (authors'-style loop)"]["steps_per_s"]
        )
    utils.write_json(out_dir / "summary.json", summary)
    width = max(len(k) for k in runs)
    print(f"{summary['device']}, {summary['tflop_per_step']:.3f} TFLOP per step")
    for name, r in runs.items():
        mem = f"{r['peak_mem_gib']:.2f} GiB" if r["peak_mem_gib"] is not None else "—"
        rate = f"{r['steps_per_s']:8.2f} steps/s  {r['tflops']:7.2f} TFLOP/s"
        print(f"{name:<{width}}  {rate}  {mem}")
    if b.baseline:
        print(f"speed-up over the baseline: {summary['speedup']:.2f}×")
    print(f"written to {out_dir / 'summary.json'}")
    return summary


if __name__ == "__main__":
    utils.cli(main, BenchConfig, __doc__, "configs/bench.yaml")
