"""A training run's folder: its step-stamped checkpoints (written atomically, read as plain data
only; an exported HF-format step folder reads too), its metrics log, and the check that a new run
never writes over an old one."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from utils.config import UserError, config_to_dict, repo_relative, resolve_path
from utils.files import atomic_write, atomic_write_text, make_dir
from utils.hf import is_hf_folder, read_hf_folder

CKPT_RE = re.compile(r"step_(\d+)\.pt$")
HF_RE = re.compile(r"^step_(\d+)$")


# ----------------------------------------------------------------------------------------------
# Checkpoints


def save_checkpoint(path: Path, state: dict) -> None:
    """`torch.save` through `atomic_write`: an interrupted save never leaves a torn file under
    the checkpoint's name."""
    atomic_write(path, lambda f: torch.save(state, f))


def _load_pt(path: Path, device: str | torch.device) -> Any:
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickles before refusing them
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # torch raises many types for a torn or foreign file
        text = str(e).strip()
        if "weights only load failed" in text.lower() or "unpickl" in text.lower():
            # torch's message goes on to suggest weights_only=False: never pass that on
            why = "it holds objects other than tensors and plain containers, which are never loaded"
        else:
            why = text.splitlines()[0] if text else type(e).__name__
        raise UserError(f"checkpoint {path} is corrupt or not a checkpoint ({why})") from None


def read_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict:
    """The one checkpoint reader: plain data only (`weights_only=True`; an HF-format folder
    through utils.hf), clear errors."""
    path = Path(path)
    if is_hf_folder(path):
        ckpt = read_hf_folder(path, device)
    elif not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    else:
        ckpt = _load_pt(path, device)
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise UserError(f"checkpoint {path} has no 'model' entry; not a tf-matcomp checkpoint")
    model = ckpt["model"]
    if not isinstance(model, dict) or not all(isinstance(v, torch.Tensor) for v in model.values()):
        raise UserError(f"checkpoint {path}: 'model' is not a state dict of tensors")
    for key, value in model.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise UserError(f"checkpoint {path} has non-finite weights (first: {key})")
    return ckpt


# ----------------------------------------------------------------------------------------------
# A training run's folder


def checkpoints(out_dir: Path, exported: bool = True) -> dict[int, Path]:
    """{step: path} of the step-stamped checkpoints in `out_dir`: step_NNNNNN.pt files and, with
    `exported`, step_NNNNNN/ folders in HF format (scripts/export_run.py --hf), which analyses
    read but a run cannot resume from."""
    found: dict[int, Path] = {}
    for p in sorted(Path(out_dir).glob("step_*")):
        m = CKPT_RE.search(p.name)
        if not m and exported and (m := HF_RE.search(p.name)):
            if not (p / "model.safetensors").is_file():
                continue
        if not m:
            continue
        step = int(m.group(1))
        if step in found:  # step_N.pt beside an exported step_N/: which one is meant?
            raise UserError(
                f"{out_dir} holds both {found[step].name} and {p.name} for step {step}; "
                "keep one, or name the one you mean with --ckpt.path"
            )
        found[step] = p
    return dict(sorted(found.items()))


def read_metrics(path: Path) -> list[dict]:
    """The records of a jsonl log. A torn last line (a run killed while writing it) is dropped;
    a bad line anywhere else is an error."""
    if not path.is_file():
        return []
    try:
        lines = [line for line in path.read_text().splitlines() if line.strip()]
    except UnicodeDecodeError:
        raise UserError(f"{path} is not a text log (not UTF-8)") from None
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise UserError(f"{path}: line {i + 1} is not a JSON record") from None
    return records


def trim_jsonl(path: Path, step: int) -> list[dict]:
    """Keep the records of a jsonl log up to `step` (a resumed run drops what came after its
    checkpoint) and return them."""
    kept = [r for r in read_metrics(path) if r["step"] <= step]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
    return kept


def prepare_run_dir(cfg: Any) -> tuple[Path, dict | None]:
    """Create or check a training run's folder (`cfg.train.out_dir`); returns it and the
    checkpoint to resume from (if any).

    Without `resume`, a folder holding another run (a checkpoint, a summary or logged steps) is
    an error: nothing is overwritten. A start that failed before its first log left nothing to
    protect. With `resume` and no checkpoint the run starts again at step 0.
    """
    out_dir = resolve_path(cfg.train.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"'train.out_dir' {out_dir} is a file, not a folder")
    found = checkpoints(out_dir, exported=False) if out_dir.is_dir() else {}
    logged = read_metrics(out_dir / "metrics.jsonl")
    if not cfg.train.resume:
        if found or (out_dir / "summary.json").exists():
            what = list(found.values())[-1].name if found else "summary.json"
            raise UserError(
                f"{out_dir} already holds a run ({what}); pass --train.resume=true to "
                "continue it or choose another --train.out_dir"
            )
        if logged:
            raise UserError(
                f"{out_dir} holds a run that logged {len(logged)} steps but saved no checkpoint; "
                "pass --train.resume=true to start it again from step 0 (its log is replaced) "
                "or choose another --train.out_dir"
            )
    make_dir(out_dir, "train.out_dir")
    for stale in out_dir.glob(".step_*.pt.tmp*"):  # a save killed half-way
        stale.unlink()
    if not (cfg.train.resume and found):
        if cfg.train.resume:
            print(f"no checkpoint in {repo_relative(out_dir)} to resume from; starting at step 0")
        return out_dir, None
    path = found[max(found)]
    ckpt = read_checkpoint(path)
    if ckpt.get("step") != max(found):
        raise UserError(
            f"cannot resume from {path}: the file says it holds step {ckpt.get('step')}, its name "
            f"step {max(found)} (renamed or copied?)"
        )
    if cfg.train.steps < ckpt["step"]:
        raise UserError(
            f"cannot resume from {path}: train.steps = {cfg.train.steps} is below the "
            f"checkpoint's step {ckpt['step']} (raise train.steps, or start another run)"
        )
    mine = config_to_dict(cfg)
    for section in ("data", "model"):
        theirs = ckpt.get("config", {}).get(section, {})
        for key, value in mine[section].items():
            if theirs.get(key) != value:
                raise UserError(
                    f"cannot resume from {path}: {section}.{key} was {theirs.get(key)!r}, "
                    f"now {value!r}"
                )
    return out_dir, ckpt
