import dataclasses
import json
import math

import pytest
import torch
from conftest import ROOT
from torch import nn

import copy_check
from data import DataConfig, MatrixSampler, detokenize
from utils.config import load_config


def test_smoke_writes_the_table(tiny_run, tmp_path):
    run, _ = tiny_run
    cfg = load_config(
        copy_check.CopyCheckConfig,
        ROOT / "configs" / "copy_check.yaml",
        [
            f"ckpt.run={run}",
            "ckpt.steps=[10, 20]",
            f"out_dir={tmp_path / 'out'}",
            "device=cpu",
            "data.num_samples=16",
            "data.batch_size=8",
        ],
    )
    summary = copy_check.main(cfg)
    out = tmp_path / "out"
    for name in ("config.yaml", "summary.json", "table.md"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    inputs = ["MASK", "0.44 at hidden", "-0.24 at hidden", "random full-rank"]
    assert [(r["step"], r["input"]) for r in saved["rows"]] == [
        (s, i) for s in (10, 20) for i in inputs
    ]
    for row in saved["rows"]:
        numbers = [row[k] for k in ("loss", "loss_obs", "loss_mask")]
        assert all(math.isfinite(v) for v in numbers)
        assert (row["mse_to_value"] is None) == (row["input"] in ("MASK", "random full-rank"))


class Copier(nn.Module):
    """Outputs what its input says: the token's value where one is given, 0 at MASK."""

    def __init__(self, cfg: DataConfig):
        super().__init__()
        self.cfg = cfg

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        c = self.cfg
        values, _ = detokenize(input_ids, c.m, c.n, c.prec, c.min_vocab)
        return values.flatten(-2)


class Oracle(nn.Module):
    """Outputs the true matrix whatever it is given: a model that completes perfectly."""

    def __init__(self, target: torch.Tensor):
        super().__init__()
        self.target = target

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.target[: len(input_ids)]


def _conditions(cfg):
    sampler = MatrixSampler(cfg, seed=0)
    batch, random_batch = sampler.sample(32), sampler.sample_full_rank(32)
    return batch, copy_check.conditions(batch, random_batch, [0.44, -0.24], cfg)


def test_a_copying_model_shows_the_copying_signature():
    cfg = DataConfig(m=5, n=5, rank=1)
    _, conds = _conditions(cfg)
    rows = {r["input"]: r for r in copy_check.check_model(Copier(cfg), conds, 8, "cpu")}
    for name in ("0.44 at hidden", "-0.24 at hidden"):
        assert rows[name]["mse_to_value"] < 1e-12  # it outputs the given value at hidden entries
    for row in rows.values():
        assert row["loss_obs"] < 1e-12  # and copies every visible entry, random ones too
        assert row["loss_mask"] > 1e-3


def test_a_completing_model_does_not():
    cfg = DataConfig(m=5, n=5, rank=1)
    batch, conds = _conditions(cfg)
    conds = [c for c in conds if c.name != "random full-rank"]  # the oracle knows one batch
    rows = copy_check.check_model(Oracle(batch.target), conds, 32, "cpu")
    for row in rows:
        assert row["loss"] < 1e-12
    assert all(r["mse_to_value"] > 0.01 for r in rows if r["mse_to_value"] is not None)


def test_replacement_tokens_come_from_the_tokenizer():
    cfg = DataConfig(m=5, n=5, rank=1)
    batch, conds = _conditions(cfg)
    hidden = ~batch.observed
    by_name = {c.name: c for c in conds}
    assert (by_name["0.44 at hidden"].input_ids[hidden] == 1045).all()  # data.py's worked example
    assert (by_name["-0.24 at hidden"].input_ids[hidden] == 977).all()
    assert torch.equal(by_name["0.44 at hidden"].input_ids[~hidden], batch.input_ids[~hidden])


def test_measure_on_a_worked_example():
    """Catches mse_to_value taken over every entry, as an absolute error, or against the true
    matrix, and the losses mixed up: two hidden entries predicted 0.5 and 0.0 with v = 0.25 at
    hidden entries give ((0.25)² + (0.25)²) / 2 = 0.0625."""
    target = torch.tensor([[1.0, 0.2, -0.4, 0.0]])
    observed = torch.tensor([[True, False, True, False]])
    pred = torch.tensor([[1.0, 0.5, -0.2, 0.0]])
    c = copy_check.Condition("0.25 at hidden", torch.zeros(1, 4), target, observed, 0.25)
    got = copy_check.measure(pred, c)
    assert got == pytest.approx(
        {
            "loss": (0 + 0.09 + 0.04 + 0) / 4,
            "loss_obs": (0 + 0.04) / 2,
            "loss_mask": (0.09 + 0) / 2,
            "mse_to_value": (0.25**2 + 0.25**2) / 2,
        }
    )
    assert copy_check.measure(pred, dataclasses.replace(c, value=None))["mse_to_value"] is None
