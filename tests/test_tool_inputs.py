"""The run tools keep the scripts' promise (issue #32): scripts/sweep.py, compare_runs.py,
slurm_sweep.py, export_run.py and HF folders refuse bad input with exit code 2 and one line that
names the problem, and never overwrite what exists; run from the command line as a user would."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY

from model import load_checkpoint
from outcomes import compare
from utils.config import UserError
from utils.runs import checkpoints, read_checkpoint

VARIANT = " ".join(o for o in TINY if not o.startswith(("train.steps=", "train.save_steps=")))


def _tool(module: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"scripts.{module}", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
    )


def _one_line(done: subprocess.CompletedProcess, *needles: str) -> str:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr[-1500:]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-1500:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _snapshot(folder: Path) -> dict:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _log(folder: Path, l_mask: list[float], step0: int = 100) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    records = [
        {"step": step0 * (i + 1), "loss": 0.3 * v, "loss_mask": v, "time": float(i)}
        for i, v in enumerate(l_mask)
    ]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


# ----------------------------------------------------------------------------------------------
# scripts/sweep.py


def test_a_sweep_into_an_earlier_sweep_is_refused_and_changes_nothing(tmp_path):
    """Catches the sweep that rewrote an earlier run's log.txt (its training log replaced by the
    refusal message), sweep.json, sweep.md and compare/: every file must be as it was."""
    out = tmp_path / "sweep"
    (out / "t_s0").mkdir(parents=True)
    (out / "t_s0" / "log.txt").write_text("the earlier run's log\n")
    (out / "sweep.json").write_text("[]\n")
    before = _snapshot(out)
    done = _tool("sweep", "--out", out, "--seeds", "0", "--variant", f"t: {VARIANT}")
    _one_line(done, "already holds a sweep", "--resume")
    assert _snapshot(out) == before


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--variant", "t: train.nokey=1"], ["--variant t", "unknown key 'train.nokey'"]),
        (["--variant", "t: train.steps"], ["--variant t", "section.key=value"]),
        (["--variant", "t train.steps=5"], ["expected 'name: key=value ...'"]),
        (["--variant", "a b: train.steps=5"], ["expected 'name: key=value ...'"]),
        (["--base", "configs/nope.yaml"], ["--base", "no such config file"]),
        (["--time-limit", "0"], ["--time-limit", "above 0"]),
        (["--time-limit", "-5"], ["--time-limit", "above 0"]),
        (["--parallel", "0"], ["--parallel", "at least 1"]),
        (["--seeds", "0", "0"], ["--seeds repeats a seed"]),
        (["--prune-at", "1.5"], ["--prune-at", "below 1"]),
        (["--below", "nan"], ["--below", "finite"]),
        (["--variant", "t: train.steps=5", "--variant", "t: train.steps=6"], ["given twice"]),
    ],
)
def test_a_sweep_checks_every_run_before_starting_any(tmp_path, args, needles):
    """Catches the silent wrong runs: an unknown override key or one without '=' (exit 0 and an
    empty table, the error only in a run's log), a variant without a colon (a run name with
    spaces training the base config), a time limit that kills every run, --parallel 0 (a hang),
    a seed twice (two processes in one folder): one line, exit 2, no folder made."""
    out = tmp_path / "sweep"
    _one_line(_tool("sweep", "--out", out, *args), *needles)
    assert not out.exists()


def test_a_sweep_into_a_file_is_one_line(tmp_path):
    target = tmp_path / "file"
    target.write_text("mine\n")
    _one_line(_tool("sweep", "--out", target, "--variant", f"t: {VARIANT}"), "is a file")
    assert target.read_text() == "mine\n"


def test_a_sweep_whose_runs_fail_says_which_and_why(tmp_path):
    """Catches a sweep whose runs all failed exiting 0 with an empty table: a run that stops
    on its first batch (values outside the vocabulary) must be named with its error."""
    bad = f"t: {VARIANT} train.steps=5 data.distribution=gaussian data.scale=100"
    done = _tool("sweep", "--out", tmp_path / "s", "--seeds", "0", "--variant", bad)
    line = _one_line(done, "1 of 1 runs failed", "t_s0", "outside the vocabulary")
    assert "Traceback" not in line


# ----------------------------------------------------------------------------------------------
# scripts/compare_runs.py


def test_a_comparison_into_an_earlier_one_is_refused(tmp_path):
    run = _log(tmp_path / "r", [0.11] * 20 + [0.01] * 20)
    out = tmp_path / "cmp"
    out.mkdir()
    (out / "runs.md").write_text("the earlier table\n")
    before = _snapshot(out)
    _one_line(_tool("compare_runs", out, run), "already holds a comparison", "--replace")
    assert _snapshot(out) == before
    assert _tool("compare_runs", "--replace", out, run).returncode == 0


@pytest.mark.parametrize(
    "below, needle", [("nan", "finite"), ("-1", "above 1"), ("inf", "finite"), ("0", "above 1")]
)
def test_compare_runs_refuses_a_below_that_means_nothing(tmp_path, below, needle):
    """Catches '--below 0' (ZeroDivisionError) and 'nan× below' tables."""
    run = _log(tmp_path / "r", [0.11] * 40)
    _one_line(_tool("compare_runs", "--below", below, tmp_path / "out", run), "--below", needle)
    assert not (tmp_path / "out").exists()


def test_compare_runs_refuses_logs_it_would_misread(tmp_path):
    """Catches a log whose steps go backwards (two runs' logs in one file: a nonsense row) and
    records without L_mask (a KeyError)."""
    back = _log(tmp_path / "back", [0.11] * 10)
    with open(back / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 50, "loss": 0.03, "loss_mask": 0.1, "time": 0.0}) + "\n")
    _one_line(_tool("compare_runs", tmp_path / "o1", back), "steps go backwards", "line 11")
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 0.1}) + "\n")
    _one_line(_tool("compare_runs", tmp_path / "o2", bare), "without loss_mask")


def test_a_run_that_touches_8x_once_and_climbs_back_is_not_complete():
    """The completion rule the CPU-miniature search is judged by: L_mask 8× below the plateau
    and still there at the end. Catches a rule that counts a run complete on reaching 8× once."""
    plateau, low, back = [0.11] * 60, [0.011] * 15, [0.04] * 40
    dips = compare([{"step": 100 * (i + 1), "loss": 0.3 * v, "loss_mask": v, "time": i}
                    for i, v in enumerate(plateau + low + back)])  # fmt: skip
    assert dips["below_step"] is not None and not dips["complete"]
    stays = compare([{"step": 100 * (i + 1), "loss": 0.3 * v, "loss_mask": v, "time": i}
                     for i, v in enumerate(plateau + low + low)])  # fmt: skip
    assert stays["complete"]


# ----------------------------------------------------------------------------------------------
# scripts/slurm_sweep.py

GRID = """program: train.py
method: grid
parameters:
  train.seed: {values: [0, 1]}
  train.batch_size: {value: 16}
command:
  - ${env}
  - python3
  - ${program}
  - --config=configs/train_tiny.yaml
  - ${args}
"""


def _grid(tmp_path, text: str = GRID) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(text)
    return path


def test_slurm_sweep_takes_a_wandb_value_parameter_and_refuses_an_earlier_job(tmp_path):
    """Catches a W&B `value:` parameter (valid in W&B) read as a KeyError, and a job folder
    whose commands.txt is replaced while tasks of the old job are still queued."""
    out = tmp_path / "job"
    assert _tool("slurm_sweep", _grid(tmp_path), out, "--gpus", "0").returncode == 0
    lines = (out / "commands.txt").read_text().splitlines()
    assert len(lines) == 2 and all("--train.batch_size=16" in line for line in lines)
    before = _snapshot(out)
    _one_line(_tool("slurm_sweep", _grid(tmp_path), out), "already holds a job")
    assert _snapshot(out) == before


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--time", "abc"], ["--time", "not a SLURM time"]),
        (["--gpus", "-1"], ["--gpus", "at least 0"]),
        (["--cpus", "0"], ["--cpus", "at least 1"]),
        (["--set", "train.nokey=1"], ["would fail", "unknown key 'train.nokey'"]),
        (["--set", "train.steps"], ["--set", "KEY=VALUE"]),
    ],
)
def test_slurm_sweep_checks_its_options_before_writing(tmp_path, args, needles):
    """Catches `--time abc`, `--gpus -1`, `--cpus 0` and `--set train.nokey=1` written into the
    sbatch file unchecked (found by the queue, or by each task hours later)."""
    out = tmp_path / "job"
    _one_line(_tool("slurm_sweep", _grid(tmp_path), out, *args), *needles)
    assert not out.exists()


@pytest.mark.parametrize(
    "text, needle",
    [
        (GRID.replace("{values: [0, 1]}", "{values: []}"), "non-empty list"),
        (GRID.replace("command:", "commandx:"), "'command' must be a list"),
        ("program: train.py\nmethod: grid\ncommand:\n  - python3\n", "'parameters'"),
        (GRID.replace("{value: 16}", "16"), "needs 'values"),
        ("method: grid\n  - : [\n", "not valid YAML"),
    ],
)
def test_slurm_sweep_reads_a_bad_sweep_file_as_one_line(tmp_path, text, needle):
    """Catches `values: []` (an `--array=0--1`), a file without `command` or `parameters`
    (KeyError), and a file that is not YAML (an 8-line message)."""
    _one_line(_tool("slurm_sweep", _grid(tmp_path, text), tmp_path / "job"), needle)


# ----------------------------------------------------------------------------------------------
# scripts/export_run.py and HF folders


def _fake_gpt_run(folder: Path) -> Path:
    folder.mkdir()
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "loss.png"):
        (folder / name).write_text("x\n")
    ckpt = {"model": {"w": torch.zeros(2)}, "model_config": {"n_layer": 2}, "step": 10}
    ckpt["config"] = {"data": {"m": 3}}
    torch.save(ckpt, folder / "step_000010.pt")
    return folder


def test_export_hf_of_a_gpt_run_is_one_line_and_leaves_nothing(tmp_path):
    """Catches a KeyError that left a partial OUT behind (so that a retry was refused)."""
    run, out = _fake_gpt_run(tmp_path / "gpt"), tmp_path / "out"
    _one_line(_tool("export_run", "--hf", run, out, "10"), "not a checkpoint of train.py's BERT")
    assert not out.exists()


def test_export_into_a_path_under_a_file_is_one_line(tiny_run, tmp_path):
    run, _ = tiny_run
    (tmp_path / "file").write_text("x")
    _one_line(_tool("export_run", run, tmp_path / "file" / "out", "10"), "OUT_DIR")


@pytest.fixture
def hf_step(tiny_run, tmp_path) -> Path:
    """A fresh --hf export of the tiny session run's step 20."""
    run, _ = tiny_run
    done = _tool("export_run", "--hf", run, tmp_path / "hf", "20")
    assert done.returncode == 0, done.stderr
    return tmp_path / "hf" / "step_000020"


def _edit_config(folder: Path, edit) -> None:
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))


def _rewrite_weights(folder: Path, edit) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(folder / "model.safetensors")
    edit(tensors)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


def test_a_fresh_export_is_loaded_by_transformers_as_our_model(hf_step, tiny_run, monkeypatch):
    """Catches a writer that puts a wrong key (hidden_act, layer_norm_eps, a size) into a fresh
    config.json: transformers builds its model from config.json alone and must predict what
    MatrixBert predicts (the shipped folder's test cannot see a writer's new bug)."""
    transformers = pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run, _ = tiny_run
    ours, _ = load_checkpoint(run / "step_000020.pt")
    theirs = transformers.AutoModelForTokenClassification.from_pretrained(hf_step).eval()
    ids = torch.randint(0, ours.config.vocab_size, (8, 16))
    ids[:, ::3] = 0
    with torch.no_grad():
        torch.testing.assert_close(
            theirs(input_ids=ids).logits.squeeze(-1), ours(ids), atol=1e-5, rtol=1e-5
        )


def test_a_folder_with_a_token_type_row_reads_as_transformers_runs_it(hf_step, monkeypatch):
    """A folder fine-tuned or saved by transformers has a non-zero token-type row, which HF adds
    at every position: catches a reader that drops it instead of folding it in."""
    transformers = pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    key = "bert.embeddings.token_type_embeddings.weight"
    _rewrite_weights(hf_step, lambda t: t.__setitem__(key, 0.3 * torch.randn_like(t[key])))
    ours, _ = load_checkpoint(hf_step)
    theirs = transformers.AutoModelForTokenClassification.from_pretrained(hf_step).eval()
    ids = torch.randint(1, ours.config.vocab_size, (4, 16))
    with torch.no_grad():
        torch.testing.assert_close(
            theirs(input_ids=ids).logits.squeeze(-1), ours(ids), atol=1e-5, rtol=1e-5
        )


@pytest.mark.parametrize(
    "edit, needle",
    [
        (lambda c: c.update(hidden_size=64), "hidden_size is 64"),
        (lambda c: c.update(hidden_act="relu"), "hidden_act is 'relu'"),
        (lambda c: c["tf_matcomp"].pop("data"), "tf_matcomp.data is missing"),
        (lambda c: c["tf_matcomp"].pop("model_config"), "tf_matcomp.model_config is missing"),
        (lambda c: c.update(tf_matcomp=5), "no 'tf_matcomp' mapping"),
        (lambda c: c["tf_matcomp"].update(step=2000), "name says step 20"),
    ],
)
def test_an_hf_folder_is_checked_against_its_own_config(hf_step, edit, needle):
    """Catches a folder that runs although transformers would build another model from it
    (config.json's width against the weights), one that silently runs on the default 7×7 data
    (no `data`), a traceback for a malformed `tf_matcomp`, and figures named after a step the
    folder's name contradicts."""
    _edit_config(hf_step, edit)
    with pytest.raises(UserError, match=needle):
        read_checkpoint(hf_step)


def test_an_hf_folder_with_integer_weights_or_a_config_that_is_not_json(hf_step):
    """Catches int32 weights run as whole numbers, and a broken config.json reported as a
    missing key."""
    key = "classifier.weight"
    _rewrite_weights(hf_step, lambda t: t.__setitem__(key, t[key].to(torch.int32)))
    with pytest.raises(UserError, match="classifier.weight holds torch.int32"):
        read_checkpoint(hf_step)
    (hf_step / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="config.json is not valid JSON"):
        read_checkpoint(hf_step)


def test_a_step_held_both_as_pt_and_as_folder_is_named(tiny_run, tmp_path):
    """Catches step_020000.pt winning over step_020000/ unannounced."""
    run, _ = tiny_run
    both = tmp_path / "both"
    shutil.copytree(run, both)
    assert _tool("export_run", "--hf", run, tmp_path / "hf", "20").returncode == 0
    shutil.copytree(tmp_path / "hf" / "step_000020", both / "step_000020")
    with pytest.raises(UserError, match="both step_000020 and step_000020.pt"):
        checkpoints(both)


# ----------------------------------------------------------------------------------------------
# Resuming


def test_resume_below_the_checkpoint_or_from_a_renamed_one_is_refused(tiny_run, tmp_path):
    """Catches `--train.resume=true --train.steps=10` on a run at step 20 rewriting config.yaml
    with a cheerful 'resuming from step 20', and a checkpoint whose name and step disagree
    taken at its word."""
    run, _ = tiny_run
    folder = tmp_path / "run"
    shutil.copytree(run, folder)
    train = [
        sys.executable,
        str(ROOT / "train.py"),
        "--config",
        str(ROOT / "configs/train_tiny.yaml"),
    ]
    args = [f"--{o}" for o in TINY] + [f"--train.out_dir={folder}", "--train.resume=true"]
    before = _snapshot(folder)
    done = subprocess.run([*train, *args, "--train.steps=10"], capture_output=True, text=True)
    _one_line(done, "train.steps = 10 is below the checkpoint's step 20")
    assert _snapshot(folder) == before
    (folder / "step_000020.pt").rename(folder / "step_000030.pt")
    done = subprocess.run([*train, *args, "--train.steps=40"], capture_output=True, text=True)
    _one_line(done, "holds step 20, its name step 30")
