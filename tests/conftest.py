"""Shared fixtures: a tiny config, and a tiny model trained once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

import train
import utils

ROOT = Path(__file__).resolve().parents[1]

TINY = [
    "data.m=4",
    "data.n=4",
    "data.rank=1",
    "model.hidden_size=32",
    "model.num_hidden_layers=2",
    "model.num_attention_heads=4",
    "model.intermediate_size=64",
    "model.max_position_embeddings=64",
    "train.batch_size=16",
    "train.num_eval=8",
    "train.steps=20",
    "train.log_every=5",
    "train.save_every=0",
    "train.save_steps=[10, 20]",
    "train.device=cpu",
]


def tiny_config(tmp_path: Path, *overrides: str) -> train.TrainConfig:
    """configs/train_tiny.yaml shrunk to run in about a second, writing into tmp_path."""
    return utils.load_config(
        train.TrainConfig,
        ROOT / "configs" / "train_tiny.yaml",
        TINY + [f"train.out_dir={tmp_path / 'run'}", *overrides],
    )


@pytest.fixture
def tiny_cfg(tmp_path):
    return tiny_config(tmp_path)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A tiny training run (checkpoints at steps 10 and 20) shared by the tests that load one."""
    tmp = tmp_path_factory.mktemp("tiny_run")
    cfg = tiny_config(tmp)
    summary = train.main(cfg)
    return utils.resolve_path(cfg.train.out_dir), summary
