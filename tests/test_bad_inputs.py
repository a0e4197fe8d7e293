"""Bad input, from the command line, as a user meets it: train.py and two analyses must stop with
exit code 2 and one line that names the key or the file, and leave the target folder as it was."""

from __future__ import annotations

import hashlib
import pickle
import shutil
import subprocess
import sys
import zipfile

import pytest
import torch
from conftest import ROOT, TINY


def _snapshot(folder) -> dict:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _run(script: str, *args: str, cwd=ROOT, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
    )


def _assert_one_line(done: subprocess.CompletedProcess, *needles: str) -> None:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr[-1500:]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-1500:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "weights_only=False" not in lines[0]


@pytest.fixture
def existing(tmp_path, tiny_run):
    """A folder that already holds a finished run (the tiny session run, copied)."""
    run, _ = tiny_run
    folder = tmp_path / "existing"
    shutil.copytree(run, folder)
    return folder


TRAIN = ["--config", str(ROOT / "configs/train_tiny.yaml")] + [f"--{o}" for o in TINY]


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--train.lr=nan"], ["'train.lr'", "finite", "train_tiny.yaml"]),
        (["--data.min_val=.nan"], ["'data.min_val'", "finite"]),
        (["--train.lr=-1"], ["'train.lr'"]),
        (["--model.intermediate_size=0"], ["'model.intermediate_size'"]),
        (["--model.layer_norm_eps=-1e-12"], ["'model.layer_norm_eps'"]),
        (["--train.device=bogus"], ["bogus"]),
        (["--bogus.key=1"], ["unknown key 'bogus.key'"]),
        (["--train.resume=maybe"], ["'train.resume'"]),
    ],
)
def test_train_config_errors(existing, args, needles):
    before = _snapshot(existing)
    done = _run("train.py", *TRAIN, f"--train.out_dir={existing}", *args)
    _assert_one_line(done, *needles)
    assert _snapshot(existing) == before


def test_train_refuses_a_folder_with_a_run_and_a_file_as_folder(existing, tmp_path):
    before = _snapshot(existing)
    _assert_one_line(_run("train.py", *TRAIN, f"--train.out_dir={existing}"), "already holds")
    assert _snapshot(existing) == before
    a_file = tmp_path / "a_file"
    a_file.write_text("keep me")
    _assert_one_line(_run("train.py", *TRAIN, f"--train.out_dir={a_file}"), "is a file")
    assert a_file.read_text() == "keep me"


def test_a_config_that_is_not_utf8(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"train:\n  lr: \xff\xfe\n")
    _assert_one_line(_run("train.py", "--config", str(bad)), "bad.yaml", "UTF-8")


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--data.prec=7"], ["out of memory", "vocabulary"]),  # a 2·10⁸-token embedding
        (["--train.batch_size=1000000000000"], ["out of memory", "train.batch_size"]),
        (["--data.min_vocab=-0.5", "--data.max_vocab=0.5"], ["outside the vocabulary"]),
    ],
)
def test_a_failed_start_says_why_and_leaves_the_folder_usable(tmp_path, args, needles):
    """Catches allocation tracebacks, and a start that failed leaving files that make the next
    run in the same folder refuse with "already holds a run"."""
    out = tmp_path / "run"
    _assert_one_line(_run("train.py", *TRAIN, f"--train.out_dir={out}", *args), *needles)
    done = _run("train.py", *TRAIN, f"--train.out_dir={out}", "--train.steps=2")
    assert done.returncode == 0, done.stderr[-1500:]


# ----------------------------------------------------------------------------------------------
# Analyses: every input is checked before anything is written


def test_att_maps_checks_the_mask_before_writing(existing, tiny_run, tmp_path):
    run, _ = tiny_run
    out = tmp_path / "old_result"
    done = _run(
        "att_maps.py",
        f"--ckpt.run={run}",
        "--ckpt.steps=[20]",
        f"--out_dir={out}",
        "--device=cpu",
        "--data.num_samples=8",
    )
    assert done.returncode == 0, done.stderr[-1500:]
    before = _snapshot(out)
    done = _run(
        "att_maps.py",
        f"--ckpt.run={run}",
        "--ckpt.steps=[20]",
        f"--out_dir={out}",
        "--att_maps.mask=row",
        "--att_maps.hidden_lines=[10]",
        "--device=cpu",
    )
    _assert_one_line(done, "att_maps.hidden_lines")
    assert _snapshot(out) == before


def _corrupt(path) -> None:
    path.write_bytes(path.read_bytes()[:200])


def _malicious(path) -> None:
    """A checkpoint file whose pickle would run code if loaded without weights_only."""

    class Boom:
        def __reduce__(self):
            return (print, ("this must never run",))

    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"model": Boom()}))
        z.writestr("archive/version", "3\n")


def _nan_weights(path) -> None:
    ckpt = torch.load(path, weights_only=True)
    key = next(iter(ckpt["model"]))
    ckpt["model"][key] = ckpt["model"][key] * float("nan")
    torch.save(ckpt, path)


def _model_not_a_dict(path) -> None:
    ckpt = torch.load(path, weights_only=True)
    ckpt["model"] = [1, 2, 3]
    torch.save(ckpt, path)


def _unknown_config_key(path) -> None:
    ckpt = torch.load(path, weights_only=True)
    ckpt["model_config"]["bogus"] = 1
    torch.save(ckpt, path)


def _wrong_shape(path) -> None:
    ckpt = torch.load(path, weights_only=True)
    ckpt["model"]["read_out.weight"] = torch.zeros(1, 7)
    torch.save(ckpt, path)


@pytest.mark.parametrize(
    "spoil, needles",
    [
        (_corrupt, ["corrupt or not a checkpoint"]),
        (_malicious, ["never loaded"]),
        (_nan_weights, ["non-finite weights"]),
        (_model_not_a_dict, ["not a state dict"]),
        (_unknown_config_key, ["model_config does not fit", "bogus"]),
        (_wrong_shape, ["read_out.weight"]),
    ],
)
def test_copy_check_with_a_bad_later_checkpoint_writes_nothing(existing, tmp_path, spoil, needles):
    """Catches a corrupt, malicious or mis-shaped later checkpoint found only after config.yaml
    was written over an earlier result (and malicious pickles running)."""
    spoil(existing / "step_000020.pt")
    out = tmp_path / "old_result"
    out.mkdir()
    (out / "config.yaml").write_text("an earlier result\n")
    before = _snapshot(out)
    done = _run(
        "copy_check.py",
        f"--ckpt.run={existing}",
        "--ckpt.steps=[10, 20]",
        f"--out_dir={out}",
        "--device=cpu",
        "--data.num_samples=8",
    )
    _assert_one_line(done, "step_000020.pt", *needles)
    assert "this must never run" not in done.stdout + done.stderr
    assert _snapshot(out) == before


def test_authors_checkpoint_without_a_head_count_names_the_analysis_key(tmp_path, tiny_run):
    run, _ = tiny_run
    ckpt = torch.load(run / "step_000020.pt", weights_only=True)
    authors = {
        "model": {k.replace("backbone.", "_backbone.", 1): v for k, v in ckpt["model"].items()}
    }
    torch.save(authors, tmp_path / "theirs.pt")
    done = _run(
        "copy_check.py",
        f"--ckpt.paths=[{tmp_path / 'theirs.pt'}]",
        "--device=cpu",
        f"--out_dir={tmp_path / 'out'}",
    )
    _assert_one_line(done, "ckpt.num_attention_heads")
    done = _run(
        "copy_check.py",
        f"--ckpt.paths=[{tmp_path / 'theirs.pt'}]",
        "--ckpt.num_attention_heads=0",
        f"--out_dir={tmp_path / 'out'}",
    )
    _assert_one_line(done, "'ckpt.num_attention_heads'")


def test_data_out_of_the_vocabulary_names_the_config(tiny_run, tmp_path):
    run, _ = tiny_run
    done = _run(
        "ood.py",
        f"--ckpt.run={run}",
        "--ckpt.step=20",
        "--device=cpu",
        f"--out_dir={tmp_path / 'out'}",
        "--ood.distributions=['gaussian:30']",
        "--ood.ranks=[]",
        "--ood.rows=[]",
        "--ood.cols=[]",
        "--data.num_samples=8",
    )
    _assert_one_line(done, "configs/ood.yaml", "vocabulary")
