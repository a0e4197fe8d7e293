import math

import pytest
import torch
from conftest import ROOT

import train_embed
from model import load_checkpoint
from train_embed import GROUPS, group_parameter_names
from trainer import TrainConfig
from utils.config import UserError, load_config
from utils.runs import read_metrics

LOOP = [
    "device=cpu",
    "train.steps=6",
    "train.log_every=3",
    "train.batch_size=16",
    "train.num_eval=8",
    "train.save_every=0",
    "train.precision=fp32",
    "train.compile=false",
]


def te_config(out_dir, run, *overrides):
    return load_config(
        train_embed.TrainEmbedConfig,
        ROOT / "configs" / "train_embed.yaml",
        [f"ckpt.run={run}", f"out_dir={out_dir}", *LOOP, *overrides],
    )


def test_groups_partition_the_parameters(tiny_run):
    model, _ = load_checkpoint(tiny_run[0] / "step_000020.pt")
    names = [n for g in GROUPS for n in group_parameter_names(model, g)]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())
    assert len(names) == len(set(names))
    assert all(group_parameter_names(model, g) for g in GROUPS)
    assert "backbone.encoder.layer.1.attention.output.LayerNorm.weight" in names
    assert "backbone.encoder.layer.1.output.LayerNorm.weight" in group_parameter_names(model, "mlp")


@pytest.mark.parametrize("group", list(GROUPS))
def test_reinit_follows_the_models_init_and_touches_only_the_group(tiny_run, group):
    model, ckpt = load_checkpoint(tiny_run[0] / "step_000020.pt")
    torch.manual_seed(0)
    train_embed.reinitialize(model, group)
    chosen = set(group_parameter_names(model, group))
    std = model.config.initializer_range
    for name, p in model.named_parameters():
        if name not in chosen:
            assert torch.equal(p, ckpt["model"][name]), name
        elif "LayerNorm" in name:
            assert torch.equal(p, torch.ones_like(p) if name.endswith("weight") else p * 0), name
        elif name.startswith("read_out."):  # PyTorch's default: U(±1/sqrt(fan_in))
            assert p.abs().max() <= 1 / math.sqrt(model.config.hidden_size)
            assert not torch.equal(p, ckpt["model"][name])
        elif name.endswith("bias"):
            assert not p.any(), name
        else:
            rows = p[1:] if "word_embeddings" in name else p
            assert abs(rows.std().item() / std - 1) < 0.15, name
    if group == "token_embeddings":
        assert not model.backbone.embeddings.word_embeddings.weight[0].any()  # MASK row


def test_one_group_trains_through_train_fit_and_the_rest_stays_bit_identical(tiny_run, tmp_path):
    run, _ = tiny_run
    out = tmp_path / "te"
    summary = train_embed.main(te_config(out, run, "groups=[position_embeddings, mlp]"))
    before = torch.load(run / "step_000020.pt", weights_only=True)["model"]
    model, _ = load_checkpoint(run / "step_000020.pt")
    for group in ("position_embeddings", "mlp"):
        folder = out / group
        for name in ("config.yaml", "metrics.jsonl", "loss.png", "summary.json", "step_000006.pt"):
            assert (folder / name).is_file(), name
        assert [r["step"] for r in read_metrics(folder / "metrics.jsonl")] == [3, 6]
        after = torch.load(folder / "step_000006.pt", weights_only=True)["model"]
        chosen = set(group_parameter_names(model, group))
        for name, value in before.items():
            assert torch.equal(after[name], value) == (name not in chosen), name
        s = summary["groups"][group]
        assert s["frozen_unchanged"] is True and s["final_step"] == 6
        assert s["trained_params"] == sum(before[n].numel() for n in chosen)
        assert math.isfinite(s["final_loss"])
        saved = load_config(TrainConfig, folder / "config.yaml")
        assert saved.model == model.config and saved.train.steps == 6
    for name in ("config.yaml", "summary.json", "table.md", "compare.png", "compare.pdf"):
        assert (out / name).is_file(), name
    assert summary["full_training"]["final_step"] == 20

    replot = train_embed.main(te_config(out, run, "groups=[mlp]", "plot_only=true"))
    assert replot["groups"]["mlp"]["final_loss"] == summary["groups"]["mlp"]["final_loss"]
    with pytest.raises(UserError, match="already holds a run"):
        train_embed.main(te_config(out, run, "groups=[read_out, mlp]"))
    assert not (out / "read_out" / "metrics.jsonl").exists()  # refused before training anything


def test_resume_continues_a_group_run(tiny_run, tmp_path):
    run, _ = tiny_run
    out = tmp_path / "te"
    train_embed.main(te_config(out, run, "groups=[read_out]", "train.steps=3"))
    s = train_embed.main(te_config(out, run, "groups=[read_out]", "train.resume=true"))
    assert s["groups"]["read_out"]["final_step"] == 6
    assert s["groups"]["read_out"]["frozen_unchanged"] is True
    steps = [r["step"] for r in read_metrics(out / "read_out" / "metrics.jsonl")]
    assert steps == [3, 6]


@pytest.mark.parametrize(
    "override, match",
    [
        ("groups=[bogus]", r"unknown group 'bogus' \(valid: token_embeddings, "),
        ("groups=[]", "distinct"),
        ("train.steps=0", "train.steps"),
        ("train.seed=1", "unknown key 'train.seed'"),
    ],
)
def test_bad_config_is_a_clear_error(tmp_path, override, match):
    with pytest.raises(UserError, match=match) as err:
        te_config(tmp_path, tmp_path, override)
    assert "\n" not in str(err.value)


def test_plot_only_without_runs_is_a_clear_error(tiny_run, tmp_path):
    with pytest.raises(UserError, match="no finished run for group 'mlp'"):
        train_embed.main(te_config(tmp_path, tiny_run[0], "groups=[mlp]", "plot_only=true"))


def test_the_table_row_reads_each_number_from_its_own_key():
    """Catches table.md's columns filled from the wrong summary keys (the plateau level shown
    as the final loss, the drop's end as its start): every value of the summary is different."""
    s = {"trained_params": 1, "plateau_loss": 0.02, "drop_step": 300, "drop_end_step": 400}
    s.update(final_step=500, final_loss=0.001, frozen_unchanged=True)
    assert train_embed.summary_row("mlp", s) == {
        "run": "mlp",
        "trained params": 1,
        "plateau loss": 0.02,
        "drop step": 300,
        "final step": 500,
        "final loss": 0.001,
        "frozen unchanged": True,
    }
