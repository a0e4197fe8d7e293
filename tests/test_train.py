import copy
import json
import math
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml
from conftest import ROOT, tiny_config

import train
from data import MatrixSampler, detokenize
from measures import final_roles, role_changes
from model import load_checkpoint
from modeling_bert import act_name
from trainer import TrainConfig, Trainer, TrainSection, fit
from utils.config import UserError, load_config, overrides_slug, resolve_path
from utils.device import resolve_precision
from utils.drop import _flat_stretches, describe_drop, detect_drop
from utils.plots import close_figure, loss_figure
from utils.results import save_config
from utils.runs import checkpoints, prepare_run_dir, read_metrics, save_checkpoint
from utils.tracking import wandb_mode


def test_end_to_end_writes_every_output(tiny_run):
    out_dir, summary = tiny_run
    for name in ("config.yaml", "metrics.jsonl", "loss.png", "summary.json"):
        assert (out_dir / name).is_file(), name
    assert sorted(checkpoints(out_dir)) == [10, 20]
    records = read_metrics(out_dir / "metrics.jsonl")
    assert [r["step"] for r in records] == [5, 10, 15, 20]
    keys = {"step", "loss", "loss_obs", "loss_mask", "eval_loss", "mask_value"}
    assert keys <= set(records[0])
    assert all(math.isfinite(r[k]) for r in records for k in keys)
    saved = json.loads((out_dir / "summary.json").read_text())
    assert saved["final_step"] == 20 and saved == json.loads(json.dumps(summary))
    resolved = yaml.safe_load((out_dir / "config.yaml").read_text())
    assert resolved["model"]["vocab_size"] == 2002


def test_checkpoint_is_plain_data_and_rebuilds_the_model(tiny_run):
    out_dir, _ = tiny_run
    path = out_dir / "step_000020.pt"
    ckpt = torch.load(path, weights_only=True)
    assert {"model", "optimizer", "step", "config", "model_config", "rng"} <= set(ckpt)
    assert ckpt["step"] == 20
    model, _ = load_checkpoint(path)
    assert set(model.state_dict()) == set(ckpt["model"])
    assert any(k.startswith("backbone.encoder.layer.1.") for k in ckpt["model"])
    assert "read_out.weight" in ckpt["model"]
    ids = torch.randint(0, 2002, (2, 16))
    assert model(ids).shape == (2, 16)


def test_resume_equals_uninterrupted(tmp_path):
    full = tiny_config(tmp_path / "a")
    train.main(full)
    half = tiny_config(tmp_path / "b", "train.steps=10")
    train.main(half)
    resumed = tiny_config(tmp_path / "b", "train.resume=true")
    train.main(resumed)
    a = torch.load(tmp_path / "a/run/step_000020.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b/run/step_000020.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    ra = read_metrics(tmp_path / "a/run/metrics.jsonl")
    rb = read_metrics(tmp_path / "b/run/metrics.jsonl")
    assert [r["step"] for r in rb] == [5, 10, 15, 20]
    assert [r["loss"] for r in ra] == [r["loss"] for r in rb]
    assert [r["eval_loss"] for r in ra] == [r["eval_loss"] for r in rb]


def test_out_dir_with_another_run_is_refused(tmp_path):
    cfg = tiny_config(tmp_path, "train.steps=10")
    train.main(cfg)
    before = (tmp_path / "run/metrics.jsonl").read_bytes()
    with pytest.raises(UserError, match="already holds a run"):
        train.main(tiny_config(tmp_path, "train.steps=10"))
    assert (tmp_path / "run/metrics.jsonl").read_bytes() == before


def test_resume_with_other_model_is_refused(tmp_path):
    train.main(tiny_config(tmp_path, "train.steps=10"))
    with pytest.raises(UserError, match="model.hidden_size"):
        train.main(tiny_config(tmp_path, "train.resume=true", "model.hidden_size=16"))


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    cfg = tiny_config(tmp_path)
    out_dir, resume = prepare_run_dir(cfg)
    trainer = Trainer(cfg)

    def poison(x, hook):
        return x * float("nan") if trainer.step_count >= 12 else x

    trainer.model.backbone.hook_points[act_name("embed")].fns.append(poison)
    with pytest.raises(UserError, match="non-finite.*step 10"):
        fit(cfg, trainer, out_dir, resume)
    assert sorted(checkpoints(out_dir)) == [10]
    kept = torch.load(out_dir / "step_000010.pt", weights_only=True)["model"]
    assert all(torch.isfinite(v).all() for v in kept.values())


def test_wandb_offline_writes_a_local_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc: no credentials
    monkeypatch.setenv("WANDB_SILENT", "true")
    assert wandb_mode("auto") == "offline"
    cfg = tiny_config(tmp_path, "train.steps=5", "wandb.log=true")
    train.main(cfg)
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].rglob("*.wandb"))


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "override, match",
    [
        ("train.bogus=1", "unknown key 'train.bogus'"),
        ("train.steps=abc", "'train.steps' must be an integer"),
        ("train.lr=fast", "'train.lr' must be a number"),
        ("train.precision=fp8", "'train.precision' must be one of"),
        ("data.p_mask=1.0", "p_mask"),
        ("data.rank=9", "data.rank"),
        ("data.m=30", "position embeddings"),
        ("model.num_attention_heads=5", "not divisible"),
        ("train.steps=0", "train.steps"),
    ],
)
def test_bad_config_is_a_clear_error(tmp_path, override, match):
    with pytest.raises(UserError, match=match) as err:
        tiny_config(tmp_path, override)
    assert "train_tiny.yaml" in str(err.value) and "\n" not in str(err.value)


def test_missing_key_names_key_and_file(tmp_path):
    data = yaml.safe_load((ROOT / "configs/train_tiny.yaml").read_text())
    del data["train"]["lr"]
    path = tmp_path / "partial.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(UserError, match=r"partial.yaml: missing key 'train.lr'"):
        load_config(TrainConfig, path)


def test_values_outside_the_vocabulary_are_an_error(tmp_path):
    cfg = tiny_config(tmp_path, "data.min_val=-5.0", "data.max_val=5.0", "data.rank=2")
    with pytest.raises(UserError, match="outside the vocabulary"):
        train.main(cfg)


def test_cli_prints_one_line_and_exits_2(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            "--config",
            str(ROOT / "configs/train_tiny.yaml"),
            "--train.bogus=1",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "unknown key 'train.bogus'" in proc.stderr


def test_help_lists_every_option():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "--help"], capture_output=True, text=True
    )
    assert proc.returncode == 0
    for key in ("--train.steps", "--data.p_mask", "--model.hidden_size", "--wandb.log"):
        assert key in proc.stdout


def test_missing_and_corrupt_checkpoints(tmp_path):
    with pytest.raises(UserError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="corrupt"):
        load_checkpoint(bad)


# ---------------------------------------------------------------- drop detection


def _curve(drop_at=None, n=500, every=100, seed=0):
    rng = np.random.default_rng(seed)
    steps = np.arange(1, n + 1) * every
    loss = 0.067 * np.exp(rng.normal(0, 0.05, n))
    loss[:3] = [0.5, 0.2, 0.09]
    if drop_at is not None:
        fall = 1 / (1 + np.exp(-(steps - drop_at - 600) / 200))
        loss = loss * (1 - fall) + fall * 0.005 * np.exp(rng.normal(0, 0.05, n))
    return steps.tolist(), loss.tolist()


def test_drop_detector_finds_the_drop():
    steps, loss = _curve(drop_at=14_000)
    drop = detect_drop(steps, loss)
    assert 13_500 <= drop["drop_step"] <= 14_600
    assert drop["drop_end_step"] > drop["drop_step"]
    assert abs(drop["plateau_loss"] - 0.067) < 0.005


def test_drop_detector_finds_none_on_a_flat_curve():
    steps, loss = _curve(drop_at=None)
    assert detect_drop(steps, loss)["drop_step"] is None


def test_drop_detector_on_the_recorded_paper_run():
    """The H100 run of configs/train.yaml (docs/results/h100_paper_run): plateau ≈ 0.067, the
    loss leaves it between steps 11,500 and 12,000 and is below a third of it by 14,200."""
    records = read_metrics(ROOT / "docs/results/h100_paper_run/metrics.jsonl")
    assert len(records) == 500
    steps, loss = [r["step"] for r in records], [r["loss"] for r in records]
    drop = detect_drop(steps, loss)
    assert abs(drop["plateau_loss"] - 0.067) < 0.003
    assert 11_500 <= drop["drop_step"] <= 12_000
    assert 13_500 <= drop["drop_end_step"] <= 15_000
    plateau_only = [(s, v) for s, v in zip(steps, loss) if s <= 11_000]
    assert detect_drop(*zip(*plateau_only))["drop_step"] is None


@pytest.mark.parametrize(
    "run, drop_step",
    [
        ("runs/base_s1", 11_400),
        ("runs/base_s0", None),
        ("runs/batch32_s0", None),
        ("runs_2026-11-30/base_s0_2threads", None),  # leaving the plateau when it was stopped
    ],
)
def test_drop_detector_on_recorded_cpu_demo_runs(run, drop_step):
    """configs/train_tiny.yaml on 2 CPU cores (docs/results/tiny_cpu_search): the noisier CPU-demo
    curves (one batch's loss every 50 or 100 steps); seed 1 drops, the others stay flat. Whether
    or not a run drops, its plateau is p_mask · E[X²] = 0.3 / 9 (not the level of a drop cut short
    by the end of the run)."""
    path = ROOT / "docs/results/tiny_cpu_search" / run / "metrics.jsonl"
    records = read_metrics(path)
    drop = detect_drop([r["step"] for r in records], [r["loss"] for r in records])
    assert drop["drop_step"] == drop_step
    assert abs(drop["plateau_loss"] - 0.033) < 0.002
    if drop_step:
        assert drop["drop_step"] < drop["drop_end_step"] < 14_500


@pytest.mark.parametrize(
    "folder, seed, drop_step, drop_end_step",
    [
        ("seeds", 0, 4_950, 7_950),
        ("seeds", 1, 4_850, 6_900),
        ("seeds", 2, 6_600, 9_600),
        ("seeds", 3, 4_550, 6_300),
        ("seeds_more", 4, 4_450, 8_100),
        ("seeds_more", 5, 5_050, 7_600),
        ("seeds_more", 6, 4_650, 8_000),
        ("seeds_more", 7, 4_800, 5_850),
    ],
)
def test_drop_detector_on_the_cpu_demo_seeds(folder, seed, drop_step, drop_end_step):
    """configs/train_tiny.yaml as committed, seeds 0-7 (docs/results/cpu_demo): catches a detector
    change that moves the drop steps the README and the demo's page quote."""
    path = ROOT / f"docs/results/cpu_demo/{folder}/s{seed}/metrics.jsonl"
    records = read_metrics(path)
    drop = detect_drop([r["step"] for r in records], [r["loss"] for r in records])
    assert (drop["drop_step"], drop["drop_end_step"]) == (drop_step, drop_end_step)
    assert 0.032 < drop["plateau_loss"] < 0.036  # p_mask · E[X²] = 0.033


def test_flat_stretches_are_the_longest_from_each_start():
    """Catches a queue bug in the linear-time search behind the no-drop plateau: for every start
    a, b must be the last index with max - min of s[a..b] at most `flat` (checked against the
    definition on random walks)."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        s = np.cumsum(rng.normal(0, 0.1, int(rng.integers(1, 60))))
        pairs = list(_flat_stretches(s, 0.2))
        assert [a for a, _ in pairs] == list(range(len(s)))
        for a, b in pairs:
            assert np.ptp(s[a : b + 1]) <= 0.2
            assert b == len(s) - 1 or np.ptp(s[a : b + 2]) > 0.2


def test_float_options_accept_exponent_notation(tmp_path):
    assert tiny_config(tmp_path, "train.lr=2e-3").train.lr == 0.002


# ---------------------------------------------------------------- what a step trains on


def test_step_backpropagates_the_mse_over_all_entries(tmp_path):
    """Catches a step that backpropagates L_mask (or L_obs) instead of the MSE over all entries."""
    # fp32: the reference below runs without autocast (train_tiny.yaml trains in bf16)
    cfg = tiny_config(tmp_path, "train.precision=fp32")
    trainer = Trainer(cfg)
    reference = copy.deepcopy(trainer.model)
    metrics = trainer.step()  # the gradients stay on the parameters after the Adam update
    # the same batch, from a sampler with the trainer's seed
    batch = MatrixSampler(cfg.data, "cpu", seed=cfg.train.seed).sample(cfg.train.batch_size)
    loss = (reference(batch.input_ids) - batch.target).square().mean()
    loss.backward()
    assert metrics["loss"].item() == pytest.approx(loss.item(), rel=1e-6)
    for (name, p), q in zip(trainer.model.named_parameters(), reference.parameters()):
        off = (p.grad - q.grad).abs().max().item()
        assert torch.allclose(p.grad, q.grad, rtol=1e-5, atol=1e-9), f"{name}: off by {off:.3g}"


def test_training_batches_have_the_configured_rank(tmp_path, monkeypatch):
    """Catches a sampler that ignores `data.rank`: a rank-2 run must train on rank-2 matrices."""
    cfg = tiny_config(tmp_path, "data.rank=2", "train.batch_size=64")
    trainer = Trainer(cfg)
    drawn = []
    sample = trainer.sampler.sample

    def recording(*args, **kwargs):
        drawn.append(sample(*args, **kwargs))
        return drawn[-1]

    monkeypatch.setattr(trainer.sampler, "sample", recording)
    assert math.isfinite(trainer.step()["loss"].item())
    s = torch.linalg.svdvals(drawn[0].target.view(-1, 4, 4))
    share = (s[:, 1] > 0.05).float().mean().item()  # 64 of 64 today
    assert share > 0.95, f"σ₂ > 0.05 on only {share:.0%} of the training batch"
    assert (s[:, 2] < 0.05).all()


def test_logging_does_not_change_the_training_data(tmp_path):
    """Catches an eval batch drawn from the training sampler: the weights would then depend on
    how often the run logs. (16 steps: a short run may log more often than log_every says, but
    every step and every other step still differ.)"""
    for every in (1, 4):
        train.main(tiny_config(tmp_path / str(every), "train.steps=16", f"train.log_every={every}"))
    a = torch.load(tmp_path / "1/run/step_000016.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "4/run/step_000016.pt", weights_only=True)["model"]
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"log_every 1 and 4 end with other weights: {differ[:2]} ..."


def test_resume_with_dropout_equals_uninterrupted(tmp_path):
    """Catches a resume that does not restore torch's RNG: with dropout on, the resumed steps
    would draw other dropout masks than the uninterrupted run."""
    dropout = ["model.hidden_dropout_prob=0.1", "model.attention_probs_dropout_prob=0.1"]
    train.main(tiny_config(tmp_path / "a", *dropout))
    train.main(tiny_config(tmp_path / "b", "train.steps=10", *dropout))
    train.main(tiny_config(tmp_path / "b", "train.resume=true", *dropout))
    a = torch.load(tmp_path / "a/run/step_000020.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b/run/step_000020.pt", weights_only=True)["model"]
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"resumed and uninterrupted runs end with other weights: {differ[:2]} ..."
    # a 10-step run may log more often than a 20-step one: compare the steps both logged
    la = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "a/run/metrics.jsonl")}
    lb = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "b/run/metrics.jsonl")}
    both = sorted(la.keys() & lb.keys())
    assert 20 in both and [la[s] for s in both] == [lb[s] for s in both]


def _weights(path):
    return torch.load(path, weights_only=True)["model"]


def test_progress_measures_change_nothing_in_training(tmp_path):
    """Catches the hidden-progress measures touching the run: drawing their batch from the
    training or eval generator, consuming torch's RNG (dropout on), or leaving the model in eval
    mode. With and without them, weights, losses and eval losses agree bit for bit."""
    drop = ["model.hidden_dropout_prob=0.1", "model.attention_probs_dropout_prob=0.1"]
    train.main(tiny_config(tmp_path / "on", *drop, "train.progress=true"))
    train.main(tiny_config(tmp_path / "off", *drop, "train.progress=false"))
    a, b = (
        _weights(tmp_path / "on/run/step_000020.pt"),
        _weights(tmp_path / "off/run/step_000020.pt"),
    )
    assert all(torch.equal(a[k], b[k]) for k in a)
    on = read_metrics(tmp_path / "on/run/metrics.jsonl")
    off = read_metrics(tmp_path / "off/run/metrics.jsonl")
    for key in ("loss", "loss_mask", "eval_loss"):
        assert [r[key] for r in on] == [r[key] for r in off]
    assert "att_row" in on[0] and "att_row" not in off[0]


def test_progress_measures_are_logged_with_their_meaning(tiny_run):
    """Catches shares that are not shares (outside [0, 1], row + column + self > 1), a collapse
    list of the wrong depth, or role counts that disagree with the shares."""
    out_dir, summary = tiny_run
    records = read_metrics(out_dir / "metrics.jsonl")
    for r in records:
        shares = np.array([r["att_row"], r["att_col"], r["att_self"]])  # [3, L, H]
        assert shares.shape == (3, 2, 4) and shares.min() >= 0
        assert (shares.sum(0) <= 1 + 1e-5).all()
        assert len(r["collapse"]) == 3 and all(0 <= c <= 1 for c in r["collapse"])
        assert r["copy_mse"] >= 0
        rows = int((shares[0] > 0.5).sum())
        assert r["row_heads"] == rows
    assert summary["role_rule"].startswith("a head is a row")
    assert isinstance(summary["head_roles"], list)


@pytest.mark.parametrize("prec", [0, 1, 2])
def test_copy_mse_is_zero_for_a_model_that_copies(tmp_path, monkeypatch, prec):
    """Catches the copy test measured against 0.44 itself where the token written encodes it
    rounded to data.prec (0.4 at prec 1: a perfect copier scored 1.6e-3, at prec 0: 0.19)."""
    cfg = tiny_config(tmp_path, f"data.prec={prec}")
    trainer = Trainer(cfg)
    model, d = trainer.model, cfg.data
    real = model.forward

    def copying(input_ids):
        real(input_ids)  # the hooks the other measures read still run
        values, _ = detokenize(input_ids, d.m, d.n, d.prec, d.min_vocab)
        return values.flatten(-2)

    monkeypatch.setattr(model, "forward", copying)
    assert trainer.task.measure_progress()["copy_mse"].item() < 1e-12


def test_role_changes_name_the_step_a_head_kept_its_role_from():
    """Catches a head's role step taken from its first visit rather than from when it stayed:
    head (0, 1) is a row head at 10, loses it at 20, and holds it from 30 on."""

    def record(step, row01):
        row = [[0.1, row01]]
        return {"step": step, "att_row": row, "att_col": [[0.1, 0.1]], "att_self": [[0.9, 0.0]]}

    records = [record(10, 0.8), record(20, 0.3), record(30, 0.7), record(40, 0.9)]
    changes = {(c["layer"], c["head"]): c for c in role_changes(records)}
    assert changes[0, 1]["role"] == "row" and changes[0, 1]["since_step"] == 30
    assert changes[0, 0]["role"] == "self" and changes[0, 0]["since_step"] == 10
    assert changes[0, 1]["final_row"] == 0.9
    # resumed with train.progress off: the later records hold no shares, and the roles are
    # those of the last record that does (this used to raise KeyError after the last step)
    later = [{"step": 50, "loss": 0.01}, {"step": 60, "loss": 0.01}]
    changes = {(c["layer"], c["head"]): c for c in role_changes(records + later)}
    assert changes[0, 1]["final_row"] == 0.9 and changes[0, 1]["at_step"] == 40


def test_loss_figure_draws_every_curve_and_keeps_legends_off_the_data(tiny_run):
    """Catches the upper-right legend covering L and L_mask, eval_loss not drawn, and the progress
    panels missing from loss.png."""
    out_dir, summary = tiny_run
    records = read_metrics(out_dir / "metrics.jsonl")
    fig = loss_figure(records, summary, "tiny", (4, 4), final_roles(records))
    losses, heads, collapse = fig.axes[:3]
    labels = [line.get_label() for line in losses.get_lines()]
    assert any("eval" in label for label in labels) and any("L_mask" in label for label in labels)
    for ax in (losses, heads, collapse):
        legend = ax.get_legend()
        assert legend is not None and legend.get_bbox_to_anchor().x0 > ax.bbox.x1 - 1
    assert len(collapse.get_lines()) == 3  # embeddings and 2 layers
    close_figure(fig)


def test_ctrl_c_saves_and_the_printed_command_resumes_exactly(tmp_path):
    """Catches Ctrl-C losing the run (a traceback, no checkpoint, no summary or plot), a resume
    that differs from an uninterrupted run, and a printed resume command that starts afresh
    elsewhere: with an `{overrides}` folder (as in configs/sweeps), its added
    --train.resume=true must not change the folder's name."""
    import shlex
    import signal
    import time

    # the tiny settings in a config file, so that the {overrides} folder name stays short
    save_config(tiny_config(tmp_path, "train.log_every=5", "train.save_steps=[]"), tmp_path)
    base = [sys.executable, str(ROOT / "train.py"), "--config", str(tmp_path / "config.yaml")]
    proc = subprocess.Popen(
        [*base, "--train.steps=100000", f"--train.out_dir={tmp_path}/runs/{{overrides}}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        logs = list((tmp_path / "runs").glob("*/metrics.jsonl"))
        if proc.poll() is not None or logs and len(read_metrics(logs[0])) >= 3:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    (out,) = (tmp_path / "runs").iterdir()
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: SIGINT at step ") and "--train.resume=true" in last
    step = max(checkpoints(out))
    assert f"step_{step:06d}.pt" in last
    assert (out / "summary.json").is_file() and (out / "loss.png").is_file()
    printed = shlex.split(last.partition("continue with: ")[2])
    assert printed[0] == "python3"
    resume = [sys.executable, *printed[1:], f"--train.steps={step + 7}"]
    done = subprocess.run(resume, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming from step" in done.stdout
    whole = [*base, f"--train.steps={step + 7}", f"--train.out_dir={tmp_path / 'whole'}"]
    assert subprocess.run(whole, capture_output=True, cwd=ROOT).returncode == 0
    a = _weights(out / f"step_{step + 7:06d}.pt")
    b = _weights(tmp_path / "whole" / f"step_{step + 7:06d}.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_after_a_kill_before_any_checkpoint_starts_clean(tmp_path):
    """Catches duplicate metrics.jsonl records ([5, 10, 5, 10, 15, 20]) after resuming a run that
    was killed before its first checkpoint, and a torn last line stopping the resume."""
    cfg = tiny_config(tmp_path, "train.save_steps=[]", "train.save_every=0")
    log = tmp_path / "run" / "metrics.jsonl"
    log.parent.mkdir(parents=True)
    log.write_text('{"step": 5, "loss": 1.0}\n{"step": 10, "loss": 1.0}\n{"step": 15, "lo')
    with pytest.raises(UserError, match="logged 2 steps but saved no checkpoint"):
        train.main(cfg)
    train.main(
        tiny_config(tmp_path, "train.save_steps=[]", "train.save_every=0", "train.resume=true")
    )
    assert [r["step"] for r in read_metrics(log)] == [5, 10, 15, 20]


def test_help_shows_the_values_the_config_sets():
    """Catches --help printing the code's defaults where the given config says otherwise
    (precision fp32 where configs/train.yaml sets bf16)."""
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            "--config",
            str(ROOT / "configs/train.yaml"),
            "--help",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    line = next(x for x in done.stdout.splitlines() if x.strip().startswith("--train.precision"))
    assert "here 'bf16'" in line


def test_no_drop_still_reports_the_plateau():
    """Catches summary.json's plateau loss missing after a run that stayed flat."""
    steps = list(range(100, 13_100, 100))
    flat = [0.033 * (1 + 0.05 * ((i % 7) - 3) / 3) for i in range(len(steps))]
    found = detect_drop(steps, [0.2, 0.1, 0.05, *flat[3:]])
    assert found["drop_step"] is None and found["plateau_loss"] == pytest.approx(0.033, rel=0.05)
    falling = [0.1 * 0.9**i for i in range(len(steps))]  # never flat over 5 % of the run
    assert detect_drop(steps, falling)["plateau_loss"] is None


def test_checkpoints_are_fsynced_before_and_after_the_rename(tmp_path, monkeypatch):
    """Catches a save that renames a file not yet on disk (a power cut could leave an empty
    latest checkpoint) or never syncs the folder holding the rename."""
    import os

    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.fstat(fd).st_mode), real(fd)))
    save_checkpoint(tmp_path / "step_000001.pt", {"model": {}})
    import stat

    assert [stat.S_ISREG(m) for m in synced] == [True, False]  # the file, then its folder


@pytest.mark.parametrize("native, expected", [(False, "fp32"), (True, "bf16")])
def test_auto_precision_takes_bf16_only_where_the_cpu_has_it(
    tmp_path, monkeypatch, native, expected
):
    """Catches `auto` training in bf16 on a CPU that emulates it (a step of the CPU demo 9×
    slower on an AVX2 machine), and a summary that records "auto" instead of what ran."""
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native)
    cfg = tiny_config(tmp_path, "train.precision=auto", "train.steps=5", "train.save_steps=[]")
    trainer = Trainer(cfg)
    assert trainer.precision == expected
    assert trainer.autocast_dtype == (torch.bfloat16 if native else None)
    assert train.main(cfg)["precision"] == expected
    for explicit in ("fp32", "tf32", "bf16"):  # an explicit choice is never overridden
        assert resolve_precision(explicit, torch.device("cpu")) == explicit


def test_a_partial_drop_is_called_partial_and_the_plateau_is_the_first_stretch():
    """Catches the no-drop summary of an untried CPU-demo seed (2026-12-02): the loss left its
    0.033 plateau at step 5,500, settled at half of it and stayed there; the summary called the
    second stretch (0.016) the plateau. The plateau is the first stretch, the drop is partial,
    and the fall is the plateau over the second level, where it happened."""
    steps = list(range(50, 12_050, 50))
    wiggle = [1 + 0.03 * ((i % 5) - 2) / 2 for i in range(len(steps))]
    level = [0.033 if s <= 5_500 else max(0.016, 0.033 - (s - 5_500) * 1.7e-5) for s in steps]
    found = detect_drop(steps, [v * w for v, w in zip(level, wiggle)])
    assert found["drop_kind"] == "partial" and found["drop_step"] is None
    assert found["plateau_loss"] == pytest.approx(0.033, rel=0.03)
    assert found["fall"] == pytest.approx(0.033 / 0.016, rel=0.05)
    # the loss is within 1.2× of the plateau until 0.033 / 1.2 = 0.0275, at step 5,823
    assert 6_400 <= found["fall_step"] and 5_650 <= found["fall_start_step"] <= 5_850
    assert "partial" in describe_drop(found)
    flat = detect_drop(steps, [0.033 * w for w in wiggle])
    assert flat["drop_kind"] == "none" and flat["fall"] < 1.2
    sudden = [0.033 if s <= 5_500 else 0.002 for s in steps]
    assert detect_drop(steps, [v * w for v, w in zip(sudden, wiggle)])["drop_kind"] == ("sudden")


def test_a_run_resumed_between_logging_steps_keeps_its_clock(tmp_path, monkeypatch):
    """Catches a resumed run whose clock restarts from the last logged record rather than from
    the checkpoint: stopped at step 12 (logs at 10 and 15), the second between 10 and 12 was
    lost, and the minutes to the drop of resumed runs read low."""
    step = Trainer.step

    def slow_step(self):
        out = step(self)
        if self.step_count in (11, 12):
            time.sleep(0.6)  # 1.2 s spent after the log at step 10, before the save at 12
        return out

    cfg = tiny_config(tmp_path, "train.save_steps=[12]")
    with monkeypatch.context() as m:
        m.setattr(Trainer, "step", slow_step)
        train.main(cfg)
    run = resolve_path(cfg.train.out_dir)
    saved = torch.load(run / "step_000012.pt", weights_only=True)["elapsed_s"]
    logged = {r["step"]: r["time"] for r in read_metrics(run / "metrics.jsonl")}
    assert saved >= logged[10] + 1.2
    (run / "step_000020.pt").unlink()
    (run / "summary.json").unlink()
    train.main(tiny_config(tmp_path, "train.save_steps=[12]", "train.resume=true"))
    resumed = {r["step"]: r["time"] for r in read_metrics(run / "metrics.jsonl")}
    assert resumed[10] == logged[10] and resumed[15] >= saved


def test_a_long_overrides_folder_name_is_cut_but_stays_unique():
    """Catches a sweep run whose {overrides} folder name exceeds what a file system takes (255
    bytes; seen with a SLURM array's extra overrides), and a cut that makes two runs share one."""
    many = [f"model.hidden_size={32 + i}" for i in range(40)]
    slug = overrides_slug(many, skip="train.out_dir")
    assert len(slug) <= 120 and slug == overrides_slug(many, skip="train.out_dir")
    other = overrides_slug([*many[:-1], "model.hidden_size=999"], skip="train.out_dir")
    assert other != slug and other[:100] == slug[:100]
    assert overrides_slug(["train.seed=1"], skip="x") == "train.seed=1"  # short: unchanged


def _section(**kw) -> TrainSection:
    return TrainSection(**{"steps": 100, "lr": 1e-3, **kw})


def test_lr_schedules_at_their_ends_and_middles():
    """Catches an off-by-one in the step index (the first update at lr 0 without warm-up), a
    cosine that does not end at 0 or is not half-way at the middle, a wsd that decays before
    its last decay_fraction, and a constant schedule that is not the paper's lr at every step."""
    constant = _section()
    assert [constant.lr_at(s) for s in (1, 50, 100)] == [1e-3] * 3
    warm = _section(warmup_steps=10)
    assert warm.lr_at(1) == pytest.approx(1e-4) and warm.lr_at(10) == pytest.approx(1e-3)
    assert warm.lr_at(11) == 1e-3  # constant after the warm-up
    cosine = _section(lr_schedule="cosine")
    assert cosine.lr_at(1) == pytest.approx(1e-3, rel=1e-3)
    assert cosine.lr_at(50) == pytest.approx(5e-4) and cosine.lr_at(100) == pytest.approx(0.0)
    cosine_warm = _section(lr_schedule="cosine", warmup_steps=20)
    assert cosine_warm.lr_at(20) == pytest.approx(1e-3) and cosine_warm.lr_at(60) == (
        pytest.approx(5e-4)
    )
    wsd = _section(lr_schedule="wsd", decay_fraction=0.25)
    assert wsd.lr_at(75) == 1e-3  # the stable phase runs to the decay's start
    assert wsd.lr_at(76) == pytest.approx(1e-3 * 24 / 25)
    assert wsd.lr_at(88) == pytest.approx(1e-3 * 12 / 25) and wsd.lr_at(100) == 0.0


@pytest.mark.parametrize(
    "override, match",
    [
        ("train.warmup_steps=20", "warmup_steps"),
        ("train.warmup_steps=-1", "warmup_steps"),
        ("train.decay_fraction=0", "decay_fraction"),
        ("train.decay_fraction=1.5", "decay_fraction"),
        ("train.lr_schedule=linear", "lr_schedule"),
    ],
)
def test_bad_lr_schedules_are_named(tmp_path, override, match):
    with pytest.raises(UserError, match=match):
        tiny_config(tmp_path, override)


def test_the_trainer_steps_at_the_scheduled_lr_and_logs_it(tmp_path):
    """Catches a schedule computed but never given to Adam (or given one step late), and a
    constant run whose lr the schedule code touches."""
    cfg = tiny_config(tmp_path, "train.lr_schedule=wsd", "train.decay_fraction=0.5")
    trainer = Trainer(cfg)
    seen = []
    step = trainer.optimizer.step

    def recording_step(*args, **kwargs):
        seen.append(trainer.optimizer.param_groups[0]["lr"])
        return step(*args, **kwargs)

    trainer.optimizer.step = recording_step
    for _ in range(20):
        trainer.step()
    assert seen == [cfg.train.lr_at(s) for s in range(1, 21)]
    assert seen[9] == cfg.train.lr and seen[-1] == 0.0
    summary = train.main(tiny_config(tmp_path / "b", "train.lr_schedule=cosine"))
    records = read_metrics(tmp_path / "b/run/metrics.jsonl")
    assert records[-1]["lr"] == 0.0 and summary["final_step"] == 20
    const = Trainer(tiny_config(tmp_path / "c"))
    const.step()
    assert const.optimizer.param_groups[0]["lr"] == const.cfg.train.lr


def test_a_scheduled_run_resumed_from_its_middle_equals_uninterrupted(tmp_path):
    """The lr depends on the step alone: catches a schedule that restarts (or restarts its
    warm-up) when a run resumes."""
    sched = ("train.lr_schedule=cosine", "train.warmup_steps=4")
    train.main(tiny_config(tmp_path / "a", *sched))
    train.main(tiny_config(tmp_path / "b", *sched))
    (tmp_path / "b/run/step_000020.pt").unlink()  # as if stopped at step 10
    train.main(tiny_config(tmp_path / "b", *sched, "train.resume=true"))
    a = torch.load(tmp_path / "a/run/step_000020.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b/run/step_000020.pt", weights_only=True)["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_a_config_saved_before_the_lr_schedule_existed_still_loads(tmp_path):
    """Catches the strict loader refusing every run folder saved before 2026-12-03 (their
    config.yaml lacks lr_schedule): such keys take the default that reproduces the old run; any
    other missing key is still an error."""
    saved = yaml.safe_load((ROOT / "configs/train_tiny.yaml").read_text())
    for key in ("lr_schedule", "warmup_steps", "decay_fraction"):
        del saved["train"][key]
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(saved))
    cfg = load_config(TrainConfig, path)
    assert (cfg.train.lr_schedule, cfg.train.warmup_steps) == ("constant", 0)
    del saved["train"]["lr"]
    path.write_text(yaml.safe_dump(saved))
    with pytest.raises(UserError, match="missing key 'train.lr'"):
        load_config(TrainConfig, path)


def test_a_mixture_of_sizes_logs_l_mask_of_each_size(tmp_path):
    """The size-mixture claim (5×5, 7×7, 9×9 learnt in order) is read off L_mask per size:
    catches a mixture run that logs only the drawn batch's L_mask (one size per step), and a
    per-size eval that changes the eval loss of runs without a mixture."""
    train.main(tiny_config(tmp_path / "mix", "data.sizes=[3, 4]", "data.rank=1"))
    records = read_metrics(tmp_path / "mix/run/metrics.jsonl")
    for key in ("eval_loss_mask_3x3", "eval_loss_mask_4x4"):
        assert all(math.isfinite(r[key]) for r in records), key
    train.main(tiny_config(tmp_path / "plain"))
    plain = read_metrics(tmp_path / "plain/run/metrics.jsonl")
    assert not any(k.startswith("eval_loss_mask_") for k in plain[0])
