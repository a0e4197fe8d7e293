"""Shared fixtures: a tiny config, and a tiny model trained once per test session."""

from __future__ import annotations

import os
from pathlib import Path

# One torch thread per test process, and the same for the scripts the tests start: under
# `pytest -n auto` each core runs a worker, and workers of torch's default thread count (one per
# core) oversubscribe the cores, whose OpenMP threads then wait on each other (reproduce.sh's
# pipeline took 101 s alone with one thread, 664 s inside the suite with the default).
os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

import train  # noqa: E402
from trainer import TrainConfig  # noqa: E402
from utils.config import load_config, resolve_path

torch.set_num_threads(1)

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


def tiny_config(tmp_path: Path, *overrides: str) -> TrainConfig:
    """configs/train_tiny.yaml shrunk to run in about a second, writing into tmp_path."""
    return load_config(
        TrainConfig,
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
    return resolve_path(cfg.train.out_dir), summary


def read_wandb_run(folder: Path) -> dict:
    """What an offline W&B run under `folder` (its `wandb/` directory holding one offline run, or
    one `offline-run-*` directory itself) holds, read back from its
    .wandb file (a LevelDB-style log of protobuf records; wandb 0.31 has no Python reader):
    {"run": the run record, "history": [{key: value}], "summary": {key: value}, "records":
    the record types written}. Nested keys are joined with '/'."""
    import time

    # Once in CI (2026-11-30, a loaded machine) a run's file held no run record when read right
    # after the run finished; suspected: W&B's service process still flushing. Read again for
    # up to 20 s before concluding that the run record is missing.
    # Under load a record can also be read half-written (a protobuf DecodeError), and once
    # (2026-12-03, CI beside a training run) the run record was there but no history yet: read
    # again until the log holds W&B's exit record, written last when the run finishes.
    from google.protobuf.message import DecodeError

    deadline = time.time() + 20
    while True:
        try:
            out = _read_wandb_file(folder)
        except DecodeError:
            if time.time() > deadline:
                raise
            out = None
        done = out is not None and out["run"] is not None and "exit" in out["records"]
        if done or time.time() > deadline:
            return out
        time.sleep(0.5)


def _read_wandb_file(folder: Path) -> dict:
    import json
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    folder = Path(folder)
    one_run = folder.name.startswith("offline-run-")
    pattern = "run-*.wandb" if one_run else "wandb/offline-run-*/run-*.wandb"
    (path,) = list(folder.glob(pattern))
    data = path.read_bytes()
    assert data[:4] == b":W&B", "not a W&B transaction log"
    records, pos, block, buf = [], 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        buf += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = pb.Record()
            record.ParseFromString(buf)
            records.append(record)
            buf = b""

    def items(seq) -> dict:
        return {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in seq}

    out = {"run": None, "history": [], "summary": {}, "records": []}
    for r in records:
        kind = r.WhichOneof("record_type")
        out["records"].append(kind)
        if kind == "run":
            out["run"] = r.run
        elif kind == "history":
            out["history"].append(items(r.history.item))
        elif kind == "summary":
            out["summary"].update(items(r.summary.update))
    return out
