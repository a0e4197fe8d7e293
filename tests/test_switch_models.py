import json
import math

import pytest
import torch
from conftest import ROOT

import switch_models
from analysis import trained_data_config
from data import MatrixSampler
from measures import evaluate
from model import load_checkpoint
from utils.config import load_config

PARTITION = ["qkv", "attn_output", "ffn", "embeddings", "layernorm", "read_out"]


def switch_cfg(run, tmp_path, *overrides: str) -> switch_models.Config:
    """configs/switch_models.yaml on the tiny run's steps 10 (pre) and 20 (post), on the CPU."""
    return load_config(
        switch_models.Config,
        ROOT / "configs" / "switch_models.yaml",
        [
            f"ckpt.run={run}",
            "ckpt.pre_step=10",
            "ckpt.post_step=20",
            f"out_dir={tmp_path / 'out'}",
            "device=cpu",
            *overrides,
        ],
    )


def test_smoke(tiny_run, tmp_path):
    run, _ = tiny_run
    cfg = switch_cfg(
        run,
        tmp_path,
        "data.num_samples=12",
        "data.batch_size=8",
        "switch.groups=[att, mlp, ffn, all]",
    )
    summary = switch_models.main(cfg)
    out = tmp_path / "out"
    for name in ("config.yaml", "summary.json", "switch_models.md"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    assert saved["steps"] == {"pre": 10, "post": 20}
    rows = {r["model"]: r for r in saved["rows"]}
    assert len(rows) == 2 + 2 * len(cfg.switch.groups)
    assert all(math.isfinite(r[k]) for r in rows.values() for k in switch_models.LOSSES)
    for k in switch_models.LOSSES:  # switching everything gives the source model
        assert rows["post with all from pre"][k] == rows["pre (step 10)"][k]
        assert rows["pre with all from post"][k] == rows["post (step 20)"][k]


def test_switching_everything_or_nothing(tiny_run):
    run, _ = tiny_run
    pre, _ = load_checkpoint(run / "step_000010.pt")
    post, _ = load_checkpoint(run / "step_000020.pt")
    names = list(post.state_dict())
    ids = torch.randint(0, 2002, (3, 16))
    with torch.no_grad():
        for keys, expected in ((names, pre), ([], post)):
            state = switch_models.switched_state(post.state_dict(), pre.state_dict(), keys)
            built = switch_models.build(post, state)
            assert torch.equal(built(ids), expected(ids))


def test_groups_partition_the_parameters(tiny_run):
    run, _ = tiny_run
    model, _ = load_checkpoint(run / "step_000020.pt")
    names = list(model.state_dict())
    parts = [set(switch_models.group_keys(names, [g])) for g in PARTITION]
    assert all(parts) and sum(len(p) for p in parts) == len(names) == len(set().union(*parts))
    keys = {g: set(switch_models.group_keys(names, [g])) for g in switch_models.GROUPS}
    assert keys["att"] == keys["qkv"]
    assert keys["mlp"] | keys["attention"] == set(names) and not keys["mlp"] & keys["attention"]
    assert "backbone.embeddings.word_embeddings.weight" in keys["mlp"]
    assert "backbone.encoder.layer.0.attention.output.LayerNorm.weight" in keys["attention"]
    assert "backbone.encoder.layer.1.output.dense.weight" in keys["ffn"]
    assert "backbone.encoder.layer.1.attention.output.dense.weight" not in keys["ffn"]


def test_a_switched_row_is_the_base_with_the_group_from_the_source(tiny_run, tmp_path):
    """Catches a direction read backwards (pre_to_post: the post-drop model with the pre-drop
    model's group), a row's losses from another model, and `params` not the number of switched
    parameters: Q, K and V of 2 layers of width 32 are 2 · 3 · (32·32 + 32) = 6336."""
    run, _ = tiny_run
    cfg = switch_cfg(
        run,
        tmp_path,
        "data.num_samples=8",
        "data.batch_size=8",
        "switch.groups=[att]",
        "switch.directions=[pre_to_post]",
    )
    summary = switch_models.main(cfg)
    rows = {r["model"]: r for r in summary["rows"]}
    row = rows["post with att from pre"]
    assert (row["base"], row["from"], row["group"], row["params"]) == ("post", "pre", "att", 6336)
    pre, _ = load_checkpoint(run / "step_000010.pt")
    post, ckpt = load_checkpoint(run / "step_000020.pt")
    state = post.state_dict()
    for name, value in pre.state_dict().items():
        if ".attention.self." in name:
            state[name] = value
    hybrid = switch_models.build(post, state)
    batches = MatrixSampler(trained_data_config(ckpt), "cpu", seed=cfg.seed).sample_many(8, 8)
    assert {k: row[k] for k in switch_models.LOSSES} == pytest.approx(
        {k: v for k, v in evaluate(hybrid, batches).items() if k in switch_models.LOSSES}
    )
    assert rows["pre (step 10)"]["params"] == 0
