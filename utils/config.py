"""Configs: strict dataclass schemas read from YAML, `--section.key=value` overrides, `--help`.

Every script declares its options as nested dataclasses and hands them to `cli`, which reads the
YAML named by `--config`, applies `--section.key=value` overrides (the form W&B sweep agents pass),
checks every key and type, and calls the script's `main(cfg)`. A bad key, type or value stops the
script with one line that names the key and the file.

Hand-written on purpose: OmegaConf (no `--` overrides, NaN passes), tyro and jsonargparse (NaN
passes, multi-line errors), pydantic-settings and Hydra each lose a guarantee the tests hold.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import field
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]


class UserError(ValueError):
    """A problem with what the user gave us (config, path, checkpoint); printed as one line."""


class DataRangeError(UserError):
    """Data the config asks for fall outside the vocabulary; `cli` names the config file."""


def opt(
    default: Any,
    help: str,
    choices: tuple | None = None,
    derived: bool = False,
    since: str | None = None,
) -> Any:
    """A config option with its help string and allowed values; lists get a fresh copy.

    A `derived` option is computed from others by the schema's `finalize`, which replaces any
    value a file gives (a saved, resolved config holds it); a YAML file leaves it out.
    An option added `since` a date, whose default does what the code did before it existed, may
    be missing from a file (a run's config.yaml saved earlier): it takes the default. Every
    other missing key is an error.
    """
    meta = {"help": help, "choices": choices, "derived": derived, "since": since}
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
            if f.metadata.get("derived") or f.metadata.get("since"):
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
MAX_SLUG = 120


def overrides_slug(overrides: list[str], skip: str) -> str:
    """The command-line overrides (but `skip`, `train.resume` and the wandb section's) as one
    folder name, e.g. `train.seed=1_model.hidden_size=96`: what `{overrides}` in an override's
    value becomes, so that every run of a W&B sweep (whose agent passes each run's values as
    overrides) writes a folder of its own, and resuming a run finds the folder it wrote."""
    ignored = (skip, "train.resume")
    parts = [o for o in overrides if o.partition("=")[0] not in ignored]
    parts = [o for o in parts if not o.startswith("wandb.")]
    slug = "_".join(parts) or "defaults"
    slug = "".join(c if c.isalnum() or c in "._=+-" else "-" for c in slug)
    if len(slug) > MAX_SLUG:  # a folder name has at most 255 bytes: cut, keep it unique
        slug = f"{slug[: MAX_SLUG - 11]}-{hashlib.sha1(slug.encode()).hexdigest()[:10]}"
    return slug


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


def parse_cli(
    cls: type, doc: str, default_config: str, argv: list[str] | None = None
) -> tuple[Any, Path]:
    """`--config PATH` plus `--section.key=value` overrides: (the config, its file). `--help`
    lists every option with the value the config (and overrides) give it, and `--print-config`
    prints the resolved config and exits (a check that a config loads)."""
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
    return cfg, config


Redraw = Callable[[dict, Path], tuple[list[Path], list[str]]]


def cli(
    main: Callable[[Any], dict],
    cls: type,
    doc: str,
    default_config: str,
    redraw: Redraw | None = None,
) -> None:
    """Run a script's `main` from the command line; a UserError becomes one line and exit code 2
    (an interrupted run: 130); data outside the vocabulary names the config file.

    A script that passes `redraw` (its `draw_figures(summary, out_dir)`) also takes
    `--redraw FOLDER`: redraw that folder's figures from its summary.json alone and print, as one
    JSON line, the files written and the notes on what was not drawn (scripts/redraw.py runs it,
    so that no module imports a script)."""
    config = None
    try:
        argv = sys.argv[1:]
        if redraw is not None and argv[:1] == ["--redraw"]:
            if len(argv) != 2:
                raise UserError("--redraw takes one result folder")
            folder = resolve_path(argv[1])
            try:
                summary = json.loads((folder / "summary.json").read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise UserError(f"{folder}/summary.json cannot be read ({e})") from None
            written, notes = redraw(summary, folder)
            print(json.dumps({"written": [str(p) for p in written], "notes": notes}))
            return
        cfg, config = parse_cli(cls, doc, default_config)
        main(cfg)
    except DataRangeError as e:
        print(f"error: {config}: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(getattr(e, "exit_code", 2)) from None


class ToolParser(argparse.ArgumentParser):
    """argparse for the scripts/ tools: a bad argument raises UserError, which `run_script`
    prints as one line (exit 2), instead of argparse's usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{self.prog}: {message}")


def number(
    kind: type = float,
    above: float | None = None,
    at_least: float | None = None,
    below: float | None = None,
) -> Callable[[str], Any]:
    """An argparse `type`: a finite number of `kind` (int or float), > `above`, ≥ `at_least`,
    < `below` where given; anything else is an error that says which bound it broke."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        for ok, what in (
            (above is None or value > above, f"above {above}"),
            (at_least is None or value >= at_least, f"at least {at_least}"),
            (below is None or value < below, f"below {below}"),
        ):
            if not ok:
                raise argparse.ArgumentTypeError(f"{text} must be {what}")
        return value

    parse.__name__ = kind.__name__  # what argparse names in its message
    return parse


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


def repo_relative(path: str | Path) -> Path:
    """`resolve_path`'s inverse: a path inside the repo relative to its root (what a config or a
    log written there should hold, so results name no machine's folders), any other as it is."""
    path = resolve_path(path)
    return path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path
