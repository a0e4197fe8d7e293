"""Does the model copy its input? Checkpoints before and after the drop (paper Table 1).

    python3 copy_check.py --config configs/copy_check.yaml
    python3 copy_check.py --config configs/copy_check.yaml --ckpt.steps=[4000,50000]

For each checkpoint in `ckpt.steps` it feeds the same matrices in three ways:
  - MASK: hidden entries given as MASK, as in training;
  - value v: hidden entries given as the token of v instead (`copy.replace_values`; the paper:
    0.44 and −0.24);
  - random: full-rank matrices with i.i.d. Unif[min_val, max_val] entries, hidden entries MASK;
and reports L, L_obs, L_mask (`loss`, `loss_obs`, `loss_mask`: against the true matrix) and,
where hidden entries got v, the MSE of the predictions there against v (`mse_to_value`).
Before the drop the model copies: with v at hidden entries it outputs ≈ v there (a small
`mse_to_value`), and it copies random inputs (a small L_obs). After the drop it completes the
matrix instead, so its outputs at hidden entries move away from v.
Writes config.yaml, summary.json and table.md (one row per checkpoint and input).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from analysis import AnalysisConfig, StepsCkptSection, open_analysis
from data import Batch, DataConfig, value_at_hidden
from measures import LOSSES, masked_mse, predict
from utils.config import cli, opt, repo_relative
from utils.floats import finite_or_none, to_floats
from utils.results import Table, prepare_output, write_results


@dataclass
class CopySection:
    replace_values: list[float] = opt(
        [0.44, -0.24], "values whose token replaces MASK at the hidden entries, one input each"
    )


@dataclass
class CopyCheckConfig(AnalysisConfig):
    script = "copy_check"  # outputs: results/<run folder name>/copy_check

    ckpt: StepsCkptSection = field(default_factory=StepsCkptSection)
    copy: CopySection = field(default_factory=CopySection)


@dataclass
class Condition:
    """One way of feeding the matrices: the input ids and what the outputs are measured against."""

    name: str
    input_ids: torch.Tensor  # [B, T]
    target: torch.Tensor  # [B, T] the true (rounded) matrix
    observed: torch.Tensor  # [B, T] True where the entry was visible
    value: float | None = None  # the value given at hidden entries, if not MASK


def conditions(
    batch: Batch, random_batch: Batch, replace_values: list[float], cfg: DataConfig
) -> list[Condition]:
    """MASK, each replacement value, and random full-rank inputs."""
    out = [Condition("MASK", batch.input_ids, batch.target, batch.observed)]
    for v in replace_values:
        ids, v = value_at_hidden(batch, v, cfg)  # v: what the token encodes
        out.append(Condition(f"{v:g} at hidden", ids, batch.target, batch.observed, v))
    rb = random_batch
    out.append(Condition("random full-rank", rb.input_ids, rb.target, rb.observed))
    return out


def measure(pred: torch.Tensor, condition: Condition) -> dict:
    """L, L_obs, L_mask against the true matrix, and the MSE to the given value at hidden
    entries (None where hidden entries were MASK)."""
    c = condition
    metrics = to_floats(masked_mse(pred, c.target, c.observed))
    hidden = pred[~c.observed].double()
    to_value = None if c.value is None else (hidden - c.value).square().mean().item()
    losses = {k: finite_or_none(metrics[k]) for k in LOSSES}
    return {**losses, "mse_to_value": to_value}


def check_model(model, conds: list[Condition], batch_size: int, device) -> list[dict]:
    """One row per condition for `model` (anything mapping input ids [B, T] to predictions)."""
    rows = []
    for c in conds:
        pred = predict(model, c.input_ids, batch_size, device)
        rows.append({"input": c.name, **measure(pred, c)})
    return rows


def main(cfg: CopyCheckConfig) -> dict:
    run = open_analysis(cfg, sampler_device="cpu")  # every checkpoint sees the first one's data
    data_cfg = run.data
    out_dir = prepare_output(cfg.out_dir, cfg)
    batch = run.sampler.sample(cfg.data.num_samples)
    random_batch = run.sampler.sample_full_rank(cfg.data.num_samples)
    conds = conditions(batch, random_batch, cfg.copy.replace_values, data_cfg)
    rows = []
    for one in run.loaded:
        for row in check_model(one.model, conds, cfg.data.batch_size, run.device):
            rows.append({"step": one.step, **row})
    columns = ["step", "input", *LOSSES, "mse_to_value"]
    table = Table(rows, columns)
    summary = {"num_samples": cfg.data.num_samples, "rows": rows}
    write_results(out_dir, summary, {"table.md": [table]}, cfg, "copy_check")
    print(f"{data_cfg.m}×{data_cfg.n}, rank {data_cfg.rank}, p_mask {data_cfg.p_mask}")
    print(table.markdown() + f"outputs in {repo_relative(out_dir)}")
    return summary


if __name__ == "__main__":
    cli(main, CopyCheckConfig, __doc__, "configs/copy_check.yaml")
