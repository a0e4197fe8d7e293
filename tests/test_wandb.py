"""W&B, offline: what train.py and every analysis log, read back from the run files; the sweep
files' command lines. No network and no W&B account: runs are written under out_dir/wandb/."""

from __future__ import annotations

import shlex
import subprocess
import sys

import pytest
from conftest import ROOT, TINY, read_wandb_run, tiny_config

import train
from trainer import TrainConfig
from utils.config import load_config, split_argv
from utils.tracking import RUN_ID_FILE

pytest.importorskip("wandb")


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """No credentials anywhere: `wandb.mode: auto` must go offline."""
    for key in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_SWEEP_ID", "WANDB_RUN_ID"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("WANDB_SILENT", "true")


def _images(row: dict) -> set[str]:
    return {k[: -len("/_type")] for k, v in row.items() if k.endswith("/_type") and "image" in v}


def test_training_run_logs_progress_images_and_summary(tmp_path, offline):
    """Catches the hidden-progress measures, the attention images at checkpoints or loss.png
    missing from W&B (a dashboard that shows only the loss)."""
    cfg = tiny_config(tmp_path, "wandb.log=true", "train.save_steps=[10, 20]")
    summary = train.main(cfg)
    run = read_wandb_run(tmp_path / "run")
    assert run["run"].job_type == "train" and run["run"].run_group == "run"  # the folder's name
    keys = set().union(*run["history"])
    assert {"loss", "loss_mask", "eval_loss", "copy_mse", "row_heads", "column_heads"} <= keys
    assert {"att_row/l0h0", "att_col/l1h3", "att_self/l1h0"} <= keys  # 2 layers × 4 heads
    assert {"collapse/emb", "collapse/l0", "collapse/l1"} <= keys
    by_step = {row["_step"]: row for row in run["history"] if "_step" in row}
    assert "images/attention" in _images(by_step[10]) and "images/attention" in _images(by_step[20])
    assert any("images/loss" in _images(row) for row in run["history"])
    assert run["summary"]["final_loss"] == pytest.approx(summary["final_loss"])
    assert "artifact" not in run["records"]  # checkpoints are uploaded only when asked


def test_checkpoints_become_artifacts_when_asked(tmp_path, offline):
    """Catches wandb.log_checkpoints being ignored."""
    cfg = tiny_config(tmp_path, "wandb.log=true", "wandb.log_checkpoints=true")
    train.main(cfg)
    assert read_wandb_run(tmp_path / "run")["records"].count("artifact") == 2  # steps 10, 20


def _analysis(script: str, run, out, *extra: str):
    """(module, config) of an analysis on the shared tiny run, with W&B on."""
    module = __import__(script)
    schema = getattr(
        module,
        {
            "copy_check": "CopyCheckConfig",
            "compare_nuc_bert": "CompareConfig",
            "embed": "EmbedConfig",
            "ood": "OodConfig",
        }.get(script, "Config"),
    )
    ckpt = {
        "att_maps": ["ckpt.steps=[10, 20]"],
        "copy_check": ["ckpt.steps=[20]"],
        "embed": ["ckpt.steps=[10, 20]", "exp_type=token_norm"],
        "switch_models": ["ckpt.pre_step=10", "ckpt.post_step=20"],
        "compare_nuc_bert": ["ckpt.step=20", "compare.p_masks=[0.3]"],
        "ood": ["ckpt.step=20", "ood.distributions=[uniform]", "ood.ranks=[1]", "ood.rows=[]"],
        "uniform_ablation": ["ckpt.step=20", "ablation.heads=[[1, 0]]", "ablation.controls=1"],
    }.get(script, ["ckpt.step=20"])
    overrides = [
        f"ckpt.run={run}",
        f"out_dir={out}",
        "device=cpu",
        "data.num_samples=8",
        "data.batch_size=8",
        "wandb.log=true",
        *ckpt,
        *extra,
    ]
    return module, load_config(schema, ROOT / "configs" / f"{script}.yaml", overrides)


ANALYSES = [
    "att_maps",
    "compare_nuc_bert",
    "copy_check",
    "embed",
    "ood",
    "patch",
    "probe",
    "switch_models",
    "uniform_ablation",
]


@pytest.mark.parametrize("script", ANALYSES)
def test_every_analysis_logs_its_tables_figures_and_summary(script, tiny_run, tmp_path, offline):
    """Catches an analysis that logs nothing to W&B, or logs outside the training run's group:
    job_type is the script, group the training run's folder name; its Markdown tables arrive
    as W&B tables and its PNGs as images."""
    run_dir, _ = tiny_run
    module, cfg = _analysis(script, run_dir, tmp_path / "out")
    module.main(cfg)
    out = tmp_path / "out"
    logged = read_wandb_run(out if script != "embed" else out / "token_norm")
    assert logged["run"].job_type == script and logged["run"].run_group == run_dir.name
    keys = set().union(*logged["history"])
    assert any(k.startswith("tables/") and k.endswith("/_type") for k in keys), sorted(keys)[:9]
    pngs = list(out.rglob("*.png"))
    images = set().union(*(_images(row) for row in logged["history"]))
    assert len(images) == len([p for p in pngs if "wandb" not in p.parts])
    assert logged["summary"], "the summary's numbers"


# ----------------------------------------------------------------------------------------------
# Sweep files


def sweep_commands(path):
    """The command lines a W&B agent runs for a grid sweep file (scripts/slurm_sweep.py)."""
    from scripts import slurm_sweep

    return slurm_sweep.grid_commands(path)


SWEEPS = sorted((ROOT / "configs" / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_sweep_commands_load_and_write_apart(path):
    """Catches a sweep whose command train.py refuses (a key or value the loader rejects), or
    whose runs would share an output folder (the second would be refused)."""
    folders = set()
    for cmd in sweep_commands(path):
        assert cmd[:2] == ["python3", "train.py"], cmd
        config, overrides = split_argv(cmd[2:], "configs/train.yaml")
        cfg = load_config(TrainConfig, ROOT / config, overrides)
        assert cfg.wandb.log
        folders.add(cfg.train.out_dir)
    assert len(folders) == len(sweep_commands(path))


def test_a_tiny_sweep_command_runs(tmp_path):
    """One generated command of the CPU sweep, shrunk to a few steps, trains to the end."""
    cmd = sweep_commands(ROOT / "configs" / "sweeps" / "tiny_grid.yaml")[0]
    cmd = [sys.executable if c == "python3" else c for c in cmd]
    cmd = [c for c in cmd if not c.startswith(("--wandb.log", "--train.out_dir"))]
    shrink = [o for o in TINY if not o.startswith(("model.", "train.batch_size"))]
    cmd += [f"--{o}" for o in shrink] + ["--train.steps=4", f"--train.out_dir={tmp_path / 'r'}"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, shlex.join(cmd) + "\n" + done.stderr[-2000:]
    assert (tmp_path / "r" / "summary.json").is_file()


def test_a_run_stopped_and_resumed_is_one_wandb_run(tmp_path, offline):
    """Catches a resumed run (a requeued sweep job) starting a second W&B run instead of
    continuing its own: both parts must carry one run id, the one kept in the run folder, and
    be named after the run folder (under a sweep agent: its overrides), not the config's stem."""
    first = tiny_config(tmp_path, "wandb.log=true", "train.steps=10", "train.save_steps=[10]")
    train.main(first)
    resumed = tiny_config(tmp_path, "wandb.log=true", "train.resume=true")
    train.main(resumed)
    folder = tmp_path / "run"
    parts = sorted((folder / "wandb").glob("offline-run-*"))
    assert len(parts) == 2
    ids = set()
    for part in parts:
        (log,) = part.glob("run-*.wandb")
        ids.add(log.name[len("run-") : -len(".wandb")])
    assert ids == {(folder / RUN_ID_FILE).read_text().strip()}
    assert read_wandb_run(parts[-1])["run"].display_name == "run"
    fresh = tiny_config(tmp_path / "new", "wandb.log=true", "train.resume=true")
    train.main(fresh)  # no checkpoint to resume from: step 0 and a W&B run of its own
    assert (tmp_path / "new/run" / RUN_ID_FILE).read_text() not in ids
