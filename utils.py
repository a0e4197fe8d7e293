"""Shared plumbing: strict configs, seeding, devices, the masked MSE, checkpoints, plots, logging.

Every script declares its options as nested dataclasses and hands them to `cli`, which reads the
YAML named by `--config`, applies `--section.key=value` overrides (the form W&B sweep agents pass),
checks every key and type, and calls the script's `main(cfg)`. A bad key, type or value stops the
script with one line that names the key and the file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

REPO_ROOT = Path(__file__).resolve().parent


class UserError(ValueError):
    """A problem with what the user gave us (config, path, checkpoint); printed as one line."""


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
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return f"{_type_name(args[0])} or null"
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
        return _coerce(value, args[0], where)
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
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{where} must be a number, got {value!r}")
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
    except UserError as e:
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
        data = yaml.safe_load(path.read_text())
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
        _set_dotted(data, key, value, f"{path} (override --{key})")
    cfg = _build(cls, data, "", str(path))
    if hasattr(cfg, "finalize"):
        try:
            cfg.finalize(path)
        except UserError as e:
            raise UserError(f"{path}: {e}") from None
    return cfg


def config_to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def config_help(cls: type, prefix: str = "") -> list[str]:
    """One line per option: `--section.key  (type, default)  help`."""
    lines = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            lines += config_help(tp, f"{prefix}{f.name}.")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        choices = f.metadata.get("choices")
        extra = f"; one of {list(choices)}" if choices else ""
        lines.append(
            f"  --{prefix}{f.name}  ({_type_name(tp)}, default {default!r}{extra})  "
            f"{f.metadata.get('help', '')}"
        )
    return lines


def parse_cli(cls: type, doc: str, default_config: str, argv: list[str] | None = None) -> Any:
    """`--config PATH` plus `--section.key=value` overrides; `--help` lists every option and
    `--print-config` prints the resolved config and exits (a check that a config loads)."""
    argv = sys.argv[1:] if argv is None else argv
    if "--print-config" in argv:
        cfg = parse_cli(cls, doc, default_config, [a for a in argv if a != "--print-config"])
        print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
        raise SystemExit(0)
    if "-h" in argv or "--help" in argv:
        print((doc or "").strip())
        print("\noptions (each also a key of the YAML file):")
        print("  --config PATH  the YAML file to read (default " + default_config + ")")
        print("  --print-config  print the resolved config and exit")
        print("\n".join(config_help(cls)))
        raise SystemExit(0)
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
    return load_config(cls, config, overrides)


def cli(main: Callable[[Any], dict], cls: type, doc: str, default_config: str) -> None:
    """Run a script's `main` from the command line; a UserError becomes one line and exit code 2."""
    try:
        main(parse_cli(cls, doc, default_config))
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


@dataclass
class CkptSection:
    run: str = opt("runs/train", "training output folder holding step_NNNNNN.pt checkpoints")
    step: int | None = opt(None, "checkpoint step; null: the last one in `run`")
    path: str | None = opt(None, "a checkpoint file instead of run/step (e.g. the authors' format)")
    num_attention_heads: int | None = opt(
        None, "heads, for an authors'-format checkpoint only (the paper: 8)"
    )


@dataclass
class StepsCkptSection:
    """Several checkpoints, in order: steps of one run, or files."""

    run: str = opt("runs/train", "training output folder holding step_NNNNNN.pt checkpoints")
    steps: list[int] = opt([], "checkpoint steps, in order; []: the last one in `run`")
    paths: list[str] = opt([], "checkpoint files instead of run/steps (e.g. the authors' format)")
    num_attention_heads: int | None = opt(
        None, "heads, for authors'-format checkpoints only (the paper: 8)"
    )

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


def prepare_output(out_dir: str | Path, cfg: Any) -> Path:
    """Create the output folder (anchored at the repo root) and save the resolved config there."""
    path = resolve_path(out_dir)
    path.mkdir(parents=True, exist_ok=True)
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
    return torch.device(name)


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


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temp file and rename, so a crash never leaves a half-written file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def write_results(out_dir: Path, summary: dict, texts: dict[str, str]) -> None:
    """An analysis's outputs: each text file (name → content), then summary.json, written last
    so that its presence means the run finished."""
    for name, text in texts.items():
        atomic_write_text(out_dir / name, text)
    write_json(out_dir / "summary.json", summary)


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
    """`torch.save` to a temp file, then rename: an interrupted save never leaves a torn file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def read_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict:
    """The one checkpoint reader: plain data only (`weights_only=True`), clear errors."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # torch raises many types for a torn or foreign file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"checkpoint {path} is corrupt or not a checkpoint ({first})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise UserError(f"checkpoint {path} has no 'model' entry; not a tf-matcomp checkpoint")
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


def save_figure(fig: Any, out_dir: Path, stem: str, pdf: bool = False) -> list[Path]:
    """Save `fig` as PNG (and PDF for the paper's figures); returns the paths written."""
    paths = [Path(out_dir) / f"{stem}.png"] + ([Path(out_dir) / f"{stem}.pdf"] if pdf else [])
    for p in paths:
        fig.savefig(p)
    return paths


def plot_losses(records: list[dict], out_dir: Path, drop: dict, title: str = "") -> list[Path]:
    """`loss.png`: loss, L_obs and L_mask against step, log scale, the drop start marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in records]
    with plt.rc_context(plot_style()):
        fig, ax = plt.subplots(figsize=(6.4, 4))
        for key, label in (("loss", "L (all)"), ("loss_obs", "L_obs"), ("loss_mask", "L_mask")):
            ax.plot(steps, [r[key] for r in records], label=label, lw=1.2)
        if drop.get("drop_step") is not None:
            ax.axvline(drop["drop_step"], color="k", ls="--", lw=0.8, label="drop starts")
        ax.set(xlabel="step", ylabel="MSE", yscale="log", title=title)
        ax.legend(loc="upper right")
        paths = save_figure(fig, out_dir, "loss")
        plt.close(fig)
    return paths


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
    Returns plateau_loss, drop_step, drop_end_step (None where there is no such drop).
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
    return none


# ----------------------------------------------------------------------------------------------
# Weights & Biases

WANDB_MODES = ("auto", "online", "offline", "disabled")


@dataclass
class WandbConfig:
    log: bool = opt(False, "log metrics to Weights & Biases")
    project: str = opt("tf-matcomp", "W&B project")
    entity: str | None = opt(None, "W&B entity (team or user); null: your default")
    name: str | None = opt(None, "run name; null: the config file's stem")
    mode: str = opt("auto", "auto: online with credentials, else offline", WANDB_MODES)


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


def init_wandb(section: Any, config: dict, out_dir: Path) -> Any:
    """Start a W&B run (or return None when `section.log` is off). Credentials come only from
    the environment or `wandb login`; with none the run is written offline under `out_dir`."""
    if not section.log:
        return None
    try:
        import wandb
    except ImportError:
        raise UserError("wandb.log is on but wandb is not installed (pip install wandb)") from None
    mode = wandb_mode(section.mode)
    run = wandb.init(
        project=section.project,
        entity=section.entity,
        name=section.name,
        config=config,
        dir=str(out_dir),
        mode=mode,
    )
    if mode == "offline":
        print(f"W&B: logging offline; upload later with: wandb sync {Path(run.dir).parent}")
    return run
