"""Files that must survive a crash, and the run folders train.py writes: atomic writes,
checkpoints (written atomically, read as plain data only; also in HuggingFace format), the
step-stamped checkpoints of a run and its metrics log."""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from utils.config import UserError, config_to_dict, resolve_path

CKPT_RE = re.compile(r"step_(\d+)\.pt$")
HF_RE = re.compile(r"^step_(\d+)$")


def make_dir(path: Path, key: str) -> Path:
    """Create folder `path` (and its parents); a one-line error naming the config `key` when a
    file is in the way or the folder cannot be made."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"'{key}' {path} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"'{key}': cannot create {path} ({e.strerror})") from None
    return path


# ----------------------------------------------------------------------------------------------
# Atomic writes


def _fsync_dir(folder: Path) -> None:
    """Make a rename inside `folder` durable (where the OS allows opening a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """`write(file)` into a temp file beside `path`, fsync, rename, fsync the folder: a crash
    never leaves a half-written file under `path`, and a written one survives a power cut
    (train.py removes the temp files a killed save leaves)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


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
# HuggingFace-format model folders: config.json, model.safetensors and a model card, which
# `transformers.AutoModelForTokenClassification.from_pretrained(folder)` loads as a
# BertForTokenClassification with one label (its `bert.*` is our backbone, its `classifier` our
# read-out, the one token type's embedding zero), and which read_checkpoint reads back. The run's
# data config and step ride along in config.json under `tf_matcomp`. Needs safetensors only.

CONFIG, WEIGHTS, CARD = "config.json", "model.safetensors", "README.md"
TOKEN_TYPES = "bert.embeddings.token_type_embeddings.weight"


def is_hf_folder(path: Path) -> bool:
    return Path(path).is_dir() and (Path(path) / WEIGHTS).is_file()


def hf_config(model_config: dict, meta: dict) -> dict:
    """config.json of a BertForTokenClassification with our encoder's sizes and no dropout."""
    c = model_config
    return {
        "architectures": ["BertForTokenClassification"],
        "model_type": "bert",
        "vocab_size": c["vocab_size"],
        "hidden_size": c["hidden_size"],
        "num_hidden_layers": c["num_hidden_layers"],
        "num_attention_heads": c["num_attention_heads"],
        "intermediate_size": c["intermediate_size"],
        "hidden_act": c["hidden_act"],
        "hidden_dropout_prob": c["hidden_dropout_prob"],
        "attention_probs_dropout_prob": c["attention_probs_dropout_prob"],
        "classifier_dropout": None,
        "max_position_embeddings": c["max_position_embeddings"],
        "type_vocab_size": 1,
        "initializer_range": c["initializer_range"],
        "layer_norm_eps": c["layer_norm_eps"],
        "pad_token_id": c["pad_token_id"],
        "position_embedding_type": "absolute",
        "num_labels": 1,
        "id2label": {"0": "value"},
        "label2id": {"value": 0},
        "torch_dtype": "float32",
        "tf_matcomp": {"model_config": c, **meta},
    }


def write_hf_folder(
    out: Path, state_dict: dict, model_config: dict, meta: dict, card: str
) -> list[Path]:
    """Our state dict (backbone.*, read_out.*) in HF's names, with the config and the card."""
    from safetensors.torch import save

    tensors = {}
    for key, value in state_dict.items():
        name = key.replace("backbone.", "bert.", 1).replace("read_out.", "classifier.", 1)
        tensors[name] = value.detach().float().cpu().contiguous()
    tensors[TOKEN_TYPES] = torch.zeros(1, model_config["hidden_size"])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / WEIGHTS, lambda f: f.write(save(tensors, metadata={"format": "pt"})))
    atomic_write_text(out / CONFIG, json.dumps(hf_config(model_config, meta), indent=2) + "\n")
    atomic_write_text(out / CARD, card)
    return [out / WEIGHTS, out / CONFIG, out / CARD]


def read_hf_folder(path: Path, device: str | torch.device = "cpu") -> dict:
    """A checkpoint dict as our checkpoints hold it (model in our names, model_config, the
    run's config with its data section, step) from a folder `write_hf_folder` made; a token-type
    embedding is folded into the positions (HF adds it at every position: exact)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    try:
        meta = json.loads((path / CONFIG).read_text())["tf_matcomp"]
        tensors = load_file(path / WEIGHTS, device=str(device))
    except FileNotFoundError as e:
        raise UserError(
            f"{path} is not a complete model folder ({Path(e.filename).name})"
        ) from None
    except (json.JSONDecodeError, KeyError, TypeError):
        raise UserError(f"{path}/{CONFIG} is not a tf-matcomp export (no 'tf_matcomp')") from None
    except SafetensorError as e:
        raise UserError(f"{path}/{WEIGHTS} is corrupt ({e})") from None
    token_types = tensors.pop(TOKEN_TYPES, None)
    model = {}
    for key, value in tensors.items():
        if key.endswith("position_ids"):
            continue
        model[key.replace("bert.", "backbone.", 1).replace("classifier.", "read_out.", 1)] = value
    if token_types is not None:
        positions = "backbone.embeddings.position_embeddings.weight"
        model[positions] = model[positions] + token_types[0]
    ckpt = {"model": model, "model_config": meta["model_config"], "step": meta.get("step")}
    ckpt["config"] = {"data": meta.get("data", {})}
    return ckpt


# ----------------------------------------------------------------------------------------------
# A training run's folder


def checkpoints(out_dir: Path, exported: bool = True) -> dict[int, Path]:
    """{step: path} of the step-stamped checkpoints in `out_dir`: step_NNNNNN.pt files and, with
    `exported`, step_NNNNNN/ folders in HF format (scripts/export_run.py --hf), which analyses
    read but a run cannot resume from."""
    found = {}
    for p in Path(out_dir).glob("step_*"):
        if m := CKPT_RE.search(p.name):
            found[int(m.group(1))] = p
        elif exported and (m := HF_RE.search(p.name)) and (p / "model.safetensors").is_file():
            found.setdefault(int(m.group(1)), p)
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
            print(f"no checkpoint in {out_dir} to resume from; starting at step 0")
        return out_dir, None
    path = found[max(found)]
    ckpt = read_checkpoint(path)
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
