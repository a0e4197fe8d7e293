"""Shared plumbing: strict configs, seeding, devices, the masked MSE, checkpoints, plots, logging.

Every script declares its options as nested dataclasses and hands them to `cli`, which reads the
YAML named by `--config`, applies `--section.key=value` overrides (the form W&B sweep agents pass),
checks every key and type, and calls the script's `main(cfg)`. A bad key, type or value stops the
script with one line that names the key and the file.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import math
import os
import random
import sys
import types
import typing
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

REPO_ROOT = Path(__file__).resolve().parent


class UserError(ValueError):
    """A problem with what the user gave us (config, path, checkpoint); printed as one line."""


class DataRangeError(UserError):
    """Data the config asks for fall outside the vocabulary; `cli` names the config file."""


# ----------------------------------------------------------------------------------------------
# Configs


def opt(default: Any, help: str, choices: tuple | None = None, derived: bool = False) -> Any:
    """A config option with its help string and allowed values; lists get a fresh copy.

    A `derived` option is computed from others by the schema's `finalize`, which replaces any
    value a file gives (a saved, resolved config holds it); a YAML file leaves it out.
    """
    meta = {"help": help, "choices": choices, "derived": derived}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: _copy(default), metadata=meta)
    return field(default=default, metadata=meta)


def _copy(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        names = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(names + (["null"] if type(None) in args else []))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`; ints widen to floats, nothing else converts."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        if len(args) == 1:
            return _coerce(value, args[0], where)
        for arg in args:  # the first type the value fits
            try:
                return _coerce(value, arg, where)
            except UserError:
                continue
        raise UserError(f"{where} must be a {_type_name(tp)}, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"{where} must be a {_type_name(tp)}, got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise UserError(f"{where} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{where} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # PyYAML reads 1e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{where} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise UserError(f"{where} must be a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise UserError(f"{where} must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp!r} at {where}")


def _build(cls: type, data: Any, where: str, source: str) -> Any:
    """Build dataclass `cls` from a dict, strictly: every field present, nothing extra."""
    if not isinstance(data, dict):
        raise UserError(f"{source}: {where or 'the file'} must be a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            valid = ", ".join(names)
            raise UserError(f"{source}: unknown key '{where}{key}' (valid here: {valid})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        key = f"{where}{f.name}"
        if f.name not in data:
            if f.metadata.get("derived"):
                continue
            raise UserError(f"{source}: missing key '{key}'")
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = _build(tp, data[f.name], f"{key}.", source)
            continue
        try:
            value = _coerce(data[f.name], tp, f"'{key}'")
        except UserError as e:
            raise UserError(f"{source}: {e}") from None
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            raise UserError(f"{source}: '{key}' must be one of {list(choices)}, got {value!r}")
        kwargs[f.name] = value
    try:
        return cls(**kwargs)
    except ValueError as e:  # UserError, or a torch-only module's own (modeling_bert)
        raise UserError(f"{source}: {e}") from None


def _set_dotted(data: dict, dotted: str, value: Any, source: str) -> None:
    *parents, last = dotted.split(".")
    node = data
    for part in parents:
        if not isinstance(node.get(part), dict):
            raise UserError(f"{source}: unknown key '{dotted}'")
        node = node[part]
    node[last] = value


def load_config(cls: type, path: str | Path, overrides: list[str] = ()) -> Any:
    """Read YAML `path` into dataclass `cls`, applying `section.key=value` overrides (YAML values).

    Relative paths inside a config are left alone; `resolve_path` anchors them at the repo root.
    A schema may define `finalize(self, config_path)` to fill derived values (an output folder).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a UTF-8 text file") from None
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    data = {} if data is None else data
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"override '{item}' must look like section.key=value")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        if isinstance(value, str) and OVERRIDES_FIELD in value:
            value = value.replace(OVERRIDES_FIELD, overrides_slug(overrides, key))
        _set_dotted(data, key, value, f"{path} (override --{key})")
    cfg = _build(cls, data, "", str(path))
    if hasattr(cfg, "finalize"):
        try:
            cfg.finalize(path)
        except UserError as e:
            raise UserError(f"{path}: {e}") from None
    return cfg


OVERRIDES_FIELD = "{overrides}"


def overrides_slug(overrides: list[str], skip: str) -> str:
    """The command-line overrides (but `skip`, `train.resume` and the wandb section's) as one
    folder name, e.g. `train.seed=1_model.hidden_size=96`: what `{overrides}` in an override's
    value becomes, so that every run of a W&B sweep (whose agent passes each run's values as
    overrides) writes a folder of its own, and resuming a run finds the folder it wrote."""
    ignored = (skip, "train.resume")
    parts = [o for o in overrides if o.partition("=")[0] not in ignored]
    parts = [o for o in parts if not o.startswith("wandb.")]
    slug = "_".join(parts) or "defaults"
    return "".join(c if c.isalnum() or c in "._=+-" else "-" for c in slug)


def config_to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def config_help(cls: type, prefix: str = "", values: dict | None = None) -> list[str]:
    """One line per option: `--section.key  (type, value)  help`; the value is the one `values`
    (a resolved config as a dict) holds, else the code's default."""
    lines = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            sub = values.get(f.name) if values is not None else None
            lines += config_help(tp, f"{prefix}{f.name}.", sub)
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        shown = f"default {default!r}" if values is None else f"here {values.get(f.name)!r}"
        choices = f.metadata.get("choices")
        extra = f"; one of {list(choices)}" if choices else ""
        lines.append(
            f"  --{prefix}{f.name}  ({_type_name(tp)}, {shown}{extra})  "
            f"{f.metadata.get('help', '')}"
        )
    return lines


def split_argv(argv: list[str], default_config: str) -> tuple[Path, list[str]]:
    """(the config file, the `section.key=value` overrides) of a command line."""
    config = REPO_ROOT / default_config
    overrides = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config":
            if i + 1 >= len(argv):
                raise UserError("--config needs a path")
            config, i = Path(argv[i + 1]), i + 2
            continue
        if arg.startswith("--config="):
            config, i = Path(arg.split("=", 1)[1]), i + 1
            continue
        if not arg.startswith("--") or "=" not in arg:
            raise UserError(f"unexpected argument '{arg}' (use --section.key=value)")
        overrides.append(arg[2:])
        i += 1
    return config, overrides


def parse_cli(cls: type, doc: str, default_config: str, argv: list[str] | None = None) -> Any:
    """`--config PATH` plus `--section.key=value` overrides; `--help` lists every option with
    the value the config (and overrides) give it, and `--print-config` prints the resolved config
    and exits (a check that a config loads)."""
    argv = sys.argv[1:] if argv is None else argv
    flags = ("--print-config", "-h", "--help")
    config, overrides = split_argv([a for a in argv if a not in flags], default_config)
    if "-h" in argv or "--help" in argv:
        try:
            values, where = config_to_dict(load_config(cls, config, overrides)), None
        except UserError as e:
            values, where = None, f"({e}; showing the code's defaults)"
        print((doc or "").strip())
        print(f"\noptions (each also a key of the YAML file), with the values {config} sets:")
        if where:
            print(where)
        print(f"  --config PATH  the YAML file to read (default {default_config})")
        print("  --print-config  print the resolved config and exit")
        print("\n".join(config_help(cls, values=values)))
        raise SystemExit(0)
    cfg = load_config(cls, config, overrides)
    if "--print-config" in argv:
        print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
        raise SystemExit(0)
    return cfg


def cli(main: Callable[[Any], dict], cls: type, doc: str, default_config: str) -> None:
    """Run a script's `main` from the command line; a UserError becomes one line and exit code 2
    (an interrupted run: 130)."""
    try:
        main(parse_cli(cls, doc, default_config))
    except DataRangeError as e:
        argv = [a for a in sys.argv[1:] if a not in ("--print-config", "-h", "--help")]
        config, _ = split_argv(argv, default_config)
        print(f"error: {config}: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(getattr(e, "exit_code", 2)) from None


def run_script(main: Callable[[list[str]], Any]) -> None:
    """Run a scripts/ tool's `main(argv)`; a UserError becomes one line and exit code 2."""
    try:
        main(sys.argv[1:])
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def resolve_path(path: str | Path) -> Path:
    """Relative paths in configs are anchored at the repo root, so no script depends on the cwd."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else REPO_ROOT / path


def save_config(cfg: Any, out_dir: Path) -> None:
    atomic_write_text(out_dir / "config.yaml", yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


# ----------------------------------------------------------------------------------------------
# Sections every analysis script shares (see the `ckpt` and `data` sections of configs/*.yaml)


def _check_heads_option(heads: int | None) -> None:
    if heads is not None and heads < 1:
        raise UserError(f"'ckpt.num_attention_heads' must be ≥ 1 or null, got {heads}")


@dataclass
class CkptSection:
    run: str = opt("runs/train", "training output folder holding step_NNNNNN.pt checkpoints")
    step: int | None = opt(None, "checkpoint step; null: the last one in `run`")
    path: str | None = opt(None, "a checkpoint file instead of run/step (e.g. the authors' format)")
    num_attention_heads: int | None = opt(
        None, "heads, for an authors'-format checkpoint only (the paper: 8)"
    )

    def __post_init__(self) -> None:
        _check_heads_option(self.num_attention_heads)


@dataclass
class StepsCkptSection:
    """Several checkpoints, in order: steps of one run, or files."""

    run: str = opt("runs/train", "training output folder holding step_NNNNNN.pt checkpoints")
    steps: list[int] = opt([], "checkpoint steps, in order; []: the last one in `run`")
    paths: list[str] = opt([], "checkpoint files instead of run/steps (e.g. the authors' format)")
    num_attention_heads: int | None = opt(
        None, "heads, for authors'-format checkpoints only (the paper: 8)"
    )

    def __post_init__(self) -> None:
        _check_heads_option(self.num_attention_heads)

    def sections(self) -> list[CkptSection]:
        """One `ckpt` section per checkpoint, for model.load_from_section."""
        heads = self.num_attention_heads
        if self.paths:
            return [CkptSection(path=p, num_attention_heads=heads) for p in self.paths]
        steps = self.steps or [None]
        return [CkptSection(run=self.run, step=s, num_attention_heads=heads) for s in steps]


@dataclass
class PrePostCkptSection:
    """A checkpoint before the drop and one after it, from one run (or files)."""

    run: str = opt("runs/train", "training output folder holding step_NNNNNN.pt checkpoints")
    pre_step: int = opt(4000, "the pre-drop checkpoint's step (the authors: 4000)")
    post_step: int = opt(50000, "the post-drop checkpoint's step (the authors: 50000)")
    pre_path: str | None = opt(None, "a pre-drop checkpoint file instead of run/pre_step")
    post_path: str | None = opt(None, "a post-drop checkpoint file instead of run/post_step")
    num_attention_heads: int | None = opt(
        None, "heads, for authors'-format checkpoints only (the paper: 8)"
    )

    def __post_init__(self) -> None:
        _check_heads_option(self.num_attention_heads)

    def sections(self) -> dict[str, CkptSection]:
        """{"pre": section, "post": section}, for model.load_from_section."""
        heads = self.num_attention_heads
        return {
            "pre": CkptSection(self.run, self.pre_step, self.pre_path, heads),
            "post": CkptSection(self.run, self.post_step, self.post_path, heads),
        }


@dataclass
class AnalysisData:
    """The experiment's own samples; null fields take the checkpoint's training values."""

    m: int | None = opt(None, "rows; null: as trained")
    n: int | None = opt(None, "columns; null: as trained")
    rank: int | None = opt(None, "rank; null: as trained")
    p_mask: float | None = opt(None, "probability an entry is hidden; null: as trained")
    distribution: str | None = opt(None, "uniform, gaussian or laplace; null: as trained")
    scale: float | None = opt(None, "gaussian std / laplace scale; null: as trained")
    num_samples: int = opt(512, "matrices drawn")
    batch_size: int = opt(512, "matrices per forward pass")

    def __post_init__(self) -> None:
        if self.num_samples < 1 or self.batch_size < 1:
            raise UserError("'data.num_samples' and 'data.batch_size' must be ≥ 1")


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


def prepare_output(out_dir: str | Path, cfg: Any) -> Path:
    """Create the output folder (anchored at the repo root) and save the resolved config there.
    Call it only once every input has been checked: it writes config.yaml."""
    path = make_dir(resolve_path(out_dir), "out_dir")
    save_config(cfg, path)
    return path


def markdown_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """Rows of dicts as a Markdown table; floats to 4 significant digits, None as '—'."""
    columns = columns or list(rows[0])

    def fmt(v: Any) -> str:
        if v is None:
            return "—"
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# Seeds and devices


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def choose_device(name: str = "auto") -> torch.device:
    """`auto` picks cuda, then mps, then cpu; anything else is taken as given."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device '{name}' asked for, but CUDA is not available here")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device '{name}' (auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device '{name}' asked for, but MPS is not available here")
    return device


# ----------------------------------------------------------------------------------------------
# The masked MSE: one definition for training, logging and every analysis


LOSSES = ("loss", "loss_obs", "loss_mask")  # the MSEs over all, observed and hidden entries


def masked_mse(pred: torch.Tensor, target: torch.Tensor, observed: torch.Tensor) -> dict:
    """MSE over all entries, observed entries and hidden entries (tensors, no host sync).

    `pred`, `target` and `observed` have the same shape; the mean over an empty set is NaN.
    """
    err = (pred.float() - target.float()).square()
    obs = observed.to(err.dtype)
    hid = 1.0 - obs
    return {
        "loss": err.mean(),
        "loss_obs": (err * obs).sum() / obs.sum(),
        "loss_mask": (err * hid).sum() / hid.sum(),
        "mask_value": (pred.float().abs() * hid).sum() / hid.sum(),
    }


def to_floats(metrics: dict) -> dict:
    """Tensors to Python floats (one host sync for the lot)."""
    keys = list(metrics)
    values = torch.stack([metrics[k].detach().float().reshape(()) for k in keys]).cpu().tolist()
    return dict(zip(keys, values))


def to_lists(metrics: dict) -> dict:
    """Tensors of any shape to Python floats and nested lists, to 5 significant digits (one host
    sync for the lot); non-finite values become None so the record stays valid JSON."""
    if not metrics:
        return {}
    keys = list(metrics)
    flat = torch.cat([metrics[k].detach().float().reshape(-1) for k in keys]).cpu()
    out, i = {}, 0
    for k in keys:
        shape, size = metrics[k].shape, metrics[k].numel()
        values = [finite_or_none(float(f"{v:.5g}")) for v in flat[i : i + size].tolist()]
        i += size
        for dim in reversed(shape[1:]):  # nest row-major: [L, H] -> L lists of H
            values = [values[j : j + dim] for j in range(0, len(values), dim)]
        out[k] = values[0] if not shape else values
    return out


def format_matrix(pred: torch.Tensor, target: torch.Tensor, observed: torch.Tensor) -> str:
    """Predicted matrix beside the truth; hidden entries marked with '*'."""
    rows = []
    for i in range(target.shape[0]):
        p = " ".join(
            f"{v:6.2f}{' ' if o else '*'}" for v, o in zip(pred[i].tolist(), observed[i].tolist())
        )
        t = " ".join(f"{v:6.2f}" for v in target[i].tolist())
        rows.append(f"  {p} | {t}")
    return "  prediction (* = hidden) | truth\n" + "\n".join(rows)


# ----------------------------------------------------------------------------------------------
# Files


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


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temp file, fsync, rename, fsync the folder: a crash never leaves a
    half-written file, and a written one survives a power cut."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def write_results(
    out_dir: Path, summary: dict, texts: dict[str, str], cfg: Any = None, script: str = ""
) -> None:
    """An analysis's outputs: each text file (name → content), then summary.json, written last
    so that its presence means the run finished; then, when `cfg.wandb.log` is on, all of it
    (and the figures) as a W&B run of job type `script` (`log_analysis`)."""
    for name, text in texts.items():
        atomic_write_text(out_dir / name, text)
    write_json(out_dir / "summary.json", summary)
    if cfg is not None:
        log_analysis(cfg, script, out_dir, summary, texts)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def finite_or_none(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else x


def save_checkpoint(path: Path, state: dict) -> None:
    """`torch.save` to a temp file, fsync, rename, fsync the folder: an interrupted save never
    leaves a torn file under the checkpoint's name (train.py removes stale temp files)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


@contextlib.contextmanager
def allocation_errors(hint: str) -> Iterator[None]:
    """Turn an allocation failure (CPU or GPU memory) inside the block into a one-line error
    that says which options to lower."""
    try:
        yield
    except (MemoryError, torch.OutOfMemoryError) as e:
        raise UserError(f"out of memory ({type(e).__name__}): {hint}") from None
    except RuntimeError as e:
        text = str(e)
        if "can't allocate" in text or "out of memory" in text or "not enough memory" in text:
            first = text.strip().splitlines()[0][:160]
            raise UserError(f"out of memory ({first}): {hint}") from None
        raise


def read_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict:
    """The one checkpoint reader: plain data only (`weights_only=True`), clear errors."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickles before refusing them
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # torch raises many types for a torn or foreign file
        text = str(e).strip()
        if "weights only load failed" in text.lower() or "unpickl" in text.lower():
            # torch's message goes on to suggest weights_only=False: never pass that on
            why = "it holds objects other than tensors and plain containers, which are never loaded"
        else:
            why = text.splitlines()[0] if text else type(e).__name__
        raise UserError(f"checkpoint {path} is corrupt or not a checkpoint ({why})") from None
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
# Plots


def plot_style() -> dict:
    """Matplotlib defaults for every figure (passed to `plt.rc_context`, never set globally)."""
    return {
        "figure.dpi": 110,
        "savefig.dpi": 150,
        "savefig.bbox": "tight",
        "axes.grid": True,
        "grid.alpha": 0.3,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "font.size": 10,
    }


def close_figure(fig: Any) -> None:
    pyplot().close(fig)


def save_figure(fig: Any, out_dir: Path, stem: str, pdf: bool = False) -> list[Path]:
    """Save `fig` as PNG (and PDF for the paper's figures); returns the paths written."""
    paths = [Path(out_dir) / f"{stem}.png"] + ([Path(out_dir) / f"{stem}.pdf"] if pdf else [])
    for p in paths:
        fig.savefig(p)
    return paths


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only), imported when a figure is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def fmt(x: float | None, digits: int = 3) -> str:
    """A number for a figure or a line of text: `digits` significant digits, '—' for None."""
    return "—" if x is None else f"{x:.{digits}g}"


def text_colour(rgba: tuple) -> str:
    """Black text on light cells, white on dark ones (relative luminance of the cell colour)."""
    r, g, b = rgba[:3]
    return "white" if 0.2126 * r + 0.7152 * g + 0.0722 * b < 0.5 else "black"


ROLE_COLOURS = {"row": "tab:blue", "column": "tab:orange", "self": "tab:green"}


def loss_figure(
    records: list[dict],
    drop: dict,
    title: str = "",
    shape: tuple[int, int] | None = None,
    roles: list[list[str]] | None = None,
) -> Any:
    """The training curves against step, the drop's start marked on every panel: losses (log
    scale); and, when the records hold the hidden-progress measures (train.progress), each
    head's attention share within its row or column, and representation collapse per layer.
    `shape` (m, n) draws the chance level of the shares; `roles` [layer][head] (the roles the
    heads end with, model.head_roles) colours the heads."""
    plt = pyplot()
    steps = [r["step"] for r in records]
    progress = any("att_row" in r for r in records)
    panels = 3 if progress else 1
    with plt.rc_context(plot_style()):
        fig, axes = plt.subplots(
            panels, 1, figsize=(7.5, 3.4 * panels), sharex=True, squeeze=False, layout="constrained"
        )
        axes = axes[:, 0]
        ax = axes[0]
        for key, label, style in (
            ("loss", "L (all entries)", "-"),
            ("loss_obs", "L_obs (observed)", "-"),
            ("loss_mask", "L_mask (hidden)", "-"),
            ("eval_loss", "L on fresh eval matrices", ":"),
        ):
            xs = [r["step"] for r in records if r.get(key) is not None]
            ys = [r[key] for r in records if r.get(key) is not None]
            if ys:
                ax.plot(xs, ys, style, label=label, lw=1.3)
        ax.set(ylabel="MSE (log scale)", yscale="log")
        ax.set_title(f"{title}: losses" if title else "losses", loc="left", fontsize=10)
        if progress:
            _plot_head_shares(axes[1], records, shape, roles)
            _plot_collapse(axes[2], records)
        for a in axes:
            if drop.get("drop_step") is not None:
                a.axvline(drop["drop_step"], color="k", ls="--", lw=0.9, label="drop starts")
            a.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=8)
        axes[-1].set_xlabel("step")
        axes[-1].xaxis.set_major_formatter(_steps_formatter())
        if len(steps) == 1:
            for a in axes:
                a.set_xlim(steps[0] - 1, steps[0] + 1)
    return fig


def _steps_formatter() -> Any:
    """Step ticks as 2.5k, 10k ... so that long runs' labels do not run into each other."""
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda x, _: f"{x / 1000:g}k" if abs(x) >= 1000 else f"{x:g}")


def _plot_head_shares(
    ax: Any, records: list[dict], shape: tuple[int, int] | None, roles: list[list[str]] | None
) -> None:
    """Each head's share within its row (row heads), its column (column heads), on itself (self
    heads), or the larger of its row and column shares (the rest, grey)."""
    logged = [r for r in records if "att_row" in r]
    xs = [r["step"] for r in logged]
    layers, heads = len(logged[-1]["att_row"]), len(logged[-1]["att_row"][0])
    roles = roles or [["other"] * heads for _ in range(layers)]
    labelled = set()
    for i, layer in enumerate(roles):
        for h, role in enumerate(layer):
            key = {"row": "att_row", "column": "att_col", "self": "att_self"}.get(role)
            if key is None:
                ys = [max(r["att_row"][i][h], r["att_col"][i][h]) for r in logged]
                kw = {"color": "0.75", "lw": 0.7, "zorder": 1}
                label = "other heads: larger of row, column share"
            else:
                ys = [r[key][i][h] for r in logged]
                kw = {"color": ROLE_COLOURS[role], "lw": 1.3, "zorder": 2}
                label = (
                    f"{role} heads: share on their {role}"
                    if role != "self"
                    else ("self heads: share on the query itself")
                )
                ax.annotate(
                    f"L{i + 1}H{h + 1}",
                    (xs[-1], ys[-1]),
                    fontsize=7,
                    color=kw["color"],
                    xytext=(2, 0),
                    textcoords="offset points",
                    va="center",
                )
            ax.plot(xs, ys, label=None if label in labelled else label, **kw)
            labelled.add(label)
    if shape is not None:
        m, n = shape
        ax.axhline((n - 1) / (m * n), color="tab:blue", ls=":", lw=0.8, label="chance, row")
        if m != n:
            ax.axhline((m - 1) / (m * n), color="tab:orange", ls=":", lw=0.8, label="chance, col")
    ax.axhline(0.5, color="0.4", ls="-.", lw=0.7, label="role threshold (1/2)")
    ax.set(ylabel="share of attention", ylim=(0, 1.02))
    ax.set_title(
        "attention: heads becoming row / column heads (LiHj: layer i, head j, 1-based)",
        loc="left",
        fontsize=10,
    )


def _plot_collapse(ax: Any, records: list[dict]) -> None:
    """Mean |cosine| between positions' hidden states, after the embeddings and each layer."""
    plt = pyplot()
    logged = [r for r in records if r.get("collapse")]
    if not logged:
        return
    xs = [r["step"] for r in logged]
    depth = len(logged[-1]["collapse"])
    colours = plt.get_cmap("viridis")(np.linspace(0, 0.9, depth))
    for i in range(depth):
        ys = [r["collapse"][i] for r in logged]
        label = "after the embeddings" if i == 0 else f"after layer {i}"
        ax.plot(xs, ys, color=colours[i], lw=1.2, label=label)
    ax.set(ylabel="mean |cos| between positions", ylim=(0, 1.02))
    ax.set_title(
        "representation collapse (1: all positions' hidden states parallel)",
        loc="left",
        fontsize=10,
    )


def plot_losses(
    records: list[dict],
    out_dir: Path,
    drop: dict,
    title: str = "",
    shape: tuple[int, int] | None = None,
    roles: list[list[str]] | None = None,
) -> list[Path]:
    """`loss.png`: `loss_figure` saved into `out_dir`."""
    fig = loss_figure(records, drop, title, shape, roles)
    paths = save_figure(fig, out_dir, "loss")
    pyplot().close(fig)
    return paths


def plot_attention_grid(
    pattern: torch.Tensor,
    m: int,
    n: int,
    title: str,
    observed: torch.Tensor | None = None,
    roles: list[list[str]] | None = None,
) -> Any:
    """The layers × heads grid of mean attention patterns [L, H, T, T] on one colour scale
    (square-root, so weak structure still shows), layers and heads 1-based, each head's role
    (model.head_roles) in its title and frame colour; a structured mask [m, n] beside it."""
    plt = pyplot()
    from matplotlib.colors import PowerNorm

    layers, heads, t, _ = pattern.shape
    extra = 1 if observed is not None else 0
    values = pattern.float().numpy()
    norm = PowerNorm(gamma=0.5, vmin=0.0, vmax=max(float(values.max()), 1e-6))
    with plt.rc_context({**plot_style(), "axes.grid": False}):
        fig, axes = plt.subplots(
            layers,
            heads + extra,
            figsize=(2.0 * (heads + extra) + 1.2, 2.0 * layers + 1.0),
            squeeze=False,
            layout="constrained",
        )
        for i in range(layers):
            for h in range(heads):
                ax = axes[i, h]
                im = ax.imshow(values[i, h], cmap="viridis", norm=norm, interpolation="nearest")
                for edge in range(n, t, n):  # row boundaries of the matrix
                    ax.axhline(edge - 0.5, color="w", lw=0.3, alpha=0.5)
                    ax.axvline(edge - 0.5, color="w", lw=0.3, alpha=0.5)
                ax.set_xticks([0, t - 1])
                ax.set_yticks([0, t - 1])
                ax.tick_params(labelsize=7)
                role = roles[i][h] if roles else "other"
                name = f"L{i + 1} H{h + 1}" + ("" if role == "other" else f": {role}")
                colour = ROLE_COLOURS.get(role, "black")
                ax.set_title(name, fontsize=10, color=colour)
                if role in ROLE_COLOURS:
                    for spine in ax.spines.values():
                        spine.set(visible=True, color=colour, linewidth=2.5)
                if h == 0:
                    ax.set_ylabel(f"layer {i + 1}: query")
                if i == layers - 1:
                    ax.set_xlabel("key")
            if extra:
                axes[i, heads].axis("off")
        fig.colorbar(im, ax=axes[:, :heads], shrink=0.6, label="mean attention (sqrt scale)")
        if observed is not None:
            ax = axes[0, heads]
            ax.axis("on")
            ax.imshow(observed.float().numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_title("mask (white = observed)", fontsize=9)
            ax.set_xticks(range(observed.shape[1]))
            ax.set_yticks(range(observed.shape[0]))
            ax.tick_params(labelsize=7)
            ax.set_xlabel("column (0-based)", fontsize=8)
            ax.set_ylabel("row (0-based)", fontsize=8)
        fig.suptitle(
            f"{title}: mean attention pattern of every head\n(query ↓, key →: position i·n + j "
            f"of the {m}×{n} matrix, 0-based; layers L and heads H 1-based, as in the paper)",
            fontsize=10,
        )
    return fig


# ----------------------------------------------------------------------------------------------
# The sudden drop


def _running_median(x: np.ndarray, window: int) -> np.ndarray:
    half = window // 2
    return np.array([np.median(x[max(0, i - half) : i + half + 1]) for i in range(len(x))])


def detect_drop(
    steps: list[int],
    losses: list[float],
    min_plateau_frac: float = 0.05,
    flat_ratio: float = 1.5,
    onset_ratio: float = 1.2,
    drop_ratio: float = 3.0,
    window: int = 5,
) -> dict:
    """Find the plateau and the step where the sudden drop starts, from a logged loss curve.

    Method: smooth log10(loss) with a running median over `window` logged points. A plateau is a
    stretch covering at least `min_plateau_frac` of the run (and 3 points) whose smoothed loss
    stays within a factor `flat_ratio`; its level is the median there. The first plateau after
    which the loss falls below level / `drop_ratio` for good is the one that ends in the drop.
    The drop ends at the first point below level / `drop_ratio`, and starts at the last point
    before that where the smoothed loss is still within a factor `onset_ratio` of the level.
    Returns plateau_loss, drop_step, drop_end_step (None where there is no such drop). Without a
    (finished) drop, plateau_loss is still the level of the run's longest flat stretch, if any.
    """
    none = {"plateau_loss": None, "drop_step": None, "drop_end_step": None}
    steps_a = np.asarray(steps, dtype=float)
    loss = np.asarray(losses, dtype=float)
    if len(loss) < 3 * window or not np.all(np.isfinite(loss)) or np.any(loss <= 0):
        return none
    s = np.log10(_running_median(loss, window))
    future_max = np.maximum.accumulate(s[::-1])[::-1]  # max over j ≥ i
    min_span = min_plateau_frac * (steps_a[-1] - steps_a[0])
    flat, fall, onset = np.log10(flat_ratio), np.log10(drop_ratio), np.log10(onset_ratio)
    for i in range(2, len(s)):
        a = int(np.searchsorted(steps_a, steps_a[i] - min_span, side="right")) - 1
        a = max(0, min(a, i - 2))
        if steps_a[i] - steps_a[a] < min_span:
            continue
        win = s[a : i + 1]
        if win.max() - win.min() > flat:
            continue
        level = float(np.median(win))
        if not np.any(future_max[i + 1 :] < level - fall):
            continue
        end = i + 1 + int(np.nonzero(s[i + 1 :] < level - fall)[0][0])
        near = np.nonzero(s[i:end] >= level - onset)[0]
        start = i + (int(near[-1]) if len(near) else 0)
        return {
            "plateau_loss": float(10**level),
            "drop_step": int(steps_a[start]),
            "drop_end_step": int(steps_a[end]),
        }
    # No drop (or not yet complete): the level of the longest flat stretch, if there is one.
    best = None
    for a, b in _flat_stretches(s, flat):
        if b - a >= 2 and steps_a[b] - steps_a[a] >= min_span:
            if best is None or steps_a[b] - steps_a[a] > steps_a[best[1]] - steps_a[best[0]]:
                best = (a, b)
    if best is not None:
        return {**none, "plateau_loss": float(10 ** np.median(s[best[0] : best[1] + 1]))}
    return none


def _flat_stretches(s: np.ndarray, flat: float) -> Iterator[tuple[int, int]]:
    """For each start a, (a, b) with b the last index such that s[a..b] spans at most `flat`;
    in linear time (b never moves back; running max and min in monotone queues), so that a
    run logged at thousands of points is summarised at once."""
    highs: collections.deque[int] = collections.deque()  # indices of s[a..b], values falling
    lows: collections.deque[int] = collections.deque()  # and rising
    b = -1
    for a in range(len(s)):
        if b < a:
            b = a
            highs, lows = collections.deque([a]), collections.deque([a])
        while b + 1 < len(s) and max(s[highs[0]], s[b + 1]) - min(s[lows[0]], s[b + 1]) <= flat:
            b += 1
            while highs and s[highs[-1]] <= s[b]:
                highs.pop()
            while lows and s[lows[-1]] >= s[b]:
                lows.pop()
            highs.append(b)
            lows.append(b)
        yield a, b
        for q in (highs, lows):
            if q and q[0] == a:
                q.popleft()


# ----------------------------------------------------------------------------------------------
# Weights & Biases

WANDB_MODES = ("auto", "online", "offline", "disabled")


@dataclass
class WandbConfig:
    log: bool = opt(False, "log to Weights & Biases")
    project: str = opt("tf-matcomp", "W&B project")
    entity: str | None = opt(None, "W&B entity (team or user); null: your default")
    name: str | None = opt(
        None, "run name; null: train.py the config's stem, an analysis <script>-<run folder>"
    )
    mode: str = opt("auto", "auto: online with credentials, else offline", WANDB_MODES)


@dataclass
class TrainWandbConfig(WandbConfig):
    log_checkpoints: bool = opt(False, "also upload every checkpoint as a W&B artifact")


def wandb_mode(requested: str) -> str:
    """`auto`: online when credentials exist (WANDB_API_KEY or `wandb login`), else offline."""
    if requested != "auto":
        return requested
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        import netrc

        if netrc.netrc().authenticators("api.wandb.ai"):
            return "online"
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        pass
    return "offline"


def _wandb() -> Any:
    try:
        import wandb
    except ImportError:
        raise UserError("wandb.log is on but wandb is not installed (pip install wandb)") from None
    return wandb


def init_wandb(
    section: Any,
    config: dict,
    out_dir: Path,
    job_type: str | None = None,
    group: str | None = None,
    name: str | None = None,
) -> Any:
    """Start a W&B run (or return None when `section.log` is off). Credentials come only from
    the environment or `wandb login`; with none the run is written offline under `out_dir`."""
    if not section.log:
        return None
    wandb = _wandb()
    mode = wandb_mode(section.mode)
    run = wandb.init(
        project=section.project,
        entity=section.entity,
        name=section.name or name,
        config=config,
        dir=str(out_dir),
        mode=mode,
        job_type=job_type,
        group=group,
    )
    if mode == "offline":
        print(f"W&B: logging offline; upload later with: wandb sync {Path(run.dir).parent}")
    return run


def wandb_record(record: dict) -> dict:
    """A metrics.jsonl record as W&B scalars: [layer][head] lists become `key/l0h0` ...
    (0-based, as in the configs), the per-layer collapse `collapse/emb`, `collapse/l0` ..."""
    out = {}
    for key, value in record.items():
        if key == "step" or value is None:
            continue
        if not isinstance(value, list):
            out[key] = value
        elif key == "collapse":
            for i, v in enumerate(value):
                out[f"collapse/{'emb' if i == 0 else f'l{i - 1}'}"] = v
        elif value and isinstance(value[0], list):
            for i, row in enumerate(value):
                for j, v in enumerate(row):
                    out[f"{key}/l{i}h{j}"] = v
        else:
            for i, v in enumerate(value):
                out[f"{key}/{i}"] = v
    return out


def log_wandb_step(run: Any, section: Any, step: int, path: Path, figures: dict) -> None:
    """At a checkpoint step: `figures` (name -> matplotlib figure) as images, so W&B shows a
    slider over steps, and with `section.log_checkpoints` the checkpoint as a model artifact."""
    wandb = _wandb()
    if figures:
        run.log({f"images/{k}": wandb.Image(fig) for k, fig in figures.items()}, step=step)
        for fig in figures.values():
            pyplot().close(fig)
    if getattr(section, "log_checkpoints", False):
        name = "".join(c if c.isalnum() or c in "-_." else "-" for c in f"{run.name}-checkpoints")
        artifact = wandb.Artifact(name, type="model", metadata={"step": step})
        artifact.add_file(str(path))
        run.log_artifact(artifact, aliases=[f"step-{step}", "latest"])


def log_wandb_files(run: Any, out_dir: Path, names: list[str]) -> None:
    """Images already written into `out_dir` (e.g. loss.png at the end of a run)."""
    wandb = _wandb()
    images = {
        f"images/{Path(n).stem}": wandb.Image(str(out_dir / n))
        for n in names
        if (out_dir / n).is_file()
    }
    if images:
        run.log(images)


def markdown_rows(text: str) -> list[tuple[list[str], list[list[Any]]]]:
    """The pipe tables in a Markdown text as (columns, rows); numbers parsed, '—' as None."""

    def cell(x: str) -> Any:
        x = x.strip()
        if x == "—":
            return None
        try:
            return float(x)
        except ValueError:
            return x

    tables, current = [], None
    for line in text.splitlines():
        if not line.startswith("|"):
            current = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if current is None:
            current = (cells, [])
            tables.append(current)
        elif not all(set(c) <= set("-:") for c in cells):
            current[1].append([cell(c) for c in cells])
    return tables


def log_analysis(cfg: Any, script: str, out_dir: Path, summary: dict, texts: dict) -> None:
    """An analysis's outputs as one W&B run, when `cfg.wandb.log` is on: job_type = the script,
    group = the training run's folder name (so a project shows a training run beside every
    analysis of it); every PNG the script wrote (newer than its config.yaml) as an image, every
    Markdown table as a wandb.Table, and the summary's top-level numbers as the run summary."""
    section = getattr(cfg, "wandb", None)
    if section is None or not section.log:
        return
    ckpt = getattr(cfg, "ckpt", None)
    source = getattr(ckpt, "run", None) or ""
    group = Path(source).name or None
    run = init_wandb(
        section,
        config_to_dict(cfg),
        out_dir,
        job_type=script,
        group=group,
        name=f"{script}-{group}" if group else script,
    )
    wandb = _wandb()
    started = (out_dir / "config.yaml").stat().st_mtime if (out_dir / "config.yaml").exists() else 0
    for png in sorted(out_dir.rglob("*.png")):
        if png.stat().st_mtime >= started and "wandb" not in png.parts:
            key = png.relative_to(out_dir).with_suffix("").as_posix()
            run.log({f"figures/{key}": wandb.Image(str(png))})
    for name, text in texts.items():
        for i, (columns, rows) in enumerate(markdown_rows(text)):
            if rows:
                key = f"tables/{Path(name).stem}" + (f"_{i}" if i else "")
                run.log({key: wandb.Table(columns=columns, data=rows, allow_mixed_types=True)})
    run.summary.update(
        {k: v for k, v in summary.items() if isinstance(v, (int, float, str)) and v is not None}
    )
    run.finish()
