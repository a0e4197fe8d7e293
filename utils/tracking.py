"""Weights & Biases: the `wandb` config sections, starting a run (online with credentials, else
offline), and what training runs and analyses log. wandb is imported only when logging is on."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from utils.config import UserError, config_to_dict, opt
from utils.plots import pyplot

WANDB_MODES = ("auto", "online", "offline", "disabled")
RUN_ID_FILE = "wandb_run_id.txt"  # a training run's W&B id, beside its checkpoints


@dataclass
class WandbConfig:
    log: bool = opt(False, "log to Weights & Biases")
    project: str = opt("tf-matcomp", "W&B project")
    entity: str | None = opt(None, "W&B entity (team or user); null: your default")
    name: str | None = opt(
        None,
        "run name; null: a training run the name of its folder (a sweep's run: its overrides), "
        "an analysis <script>-<run folder>",
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
    resuming: bool | None = None,
) -> Any:
    """Start a W&B run (or return None when `section.log` is off). Credentials come only from
    the environment or `wandb login`; with none the run is written offline under `out_dir`.

    With `resuming` given (a training run), the run's W&B id lives in `out_dir/RUN_ID_FILE`: a
    run resumed from a checkpoint continues the W&B run it started (`resume="allow"`), so a
    stopped and requeued sweep run stays one W&B run; one that starts at step 0 gets a new id."""
    if not section.log:
        return None
    wandb = _wandb()
    mode = wandb_mode(section.mode)
    run_id = None
    if resuming is not None:
        path = Path(out_dir) / RUN_ID_FILE
        run_id = path.read_text().strip() if resuming and path.is_file() else None
        if not run_id:
            run_id = secrets.token_hex(4)  # eight characters W&B takes as a run id
            path.write_text(run_id + "\n")
    run = wandb.init(
        project=section.project,
        entity=section.entity,
        name=section.name or name,
        config=config,
        dir=str(out_dir),
        mode=mode,
        job_type=job_type,
        group=group,
        id=run_id,
        resume="allow" if run_id else None,
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


def _cell(value: Any) -> Any:
    """A table cell as W&B takes it: numbers, strings and None as they are, the rest as text."""
    return value if value is None or isinstance(value, (int, float, str)) else str(value)


def log_analysis(cfg: Any, script: str, out_dir: Path, summary: dict, tables: dict) -> None:
    """An analysis's outputs as one W&B run, when `cfg.wandb.log` is on: job_type = the script,
    group = the training run's folder name (so a project shows a training run beside every
    analysis of it); every PNG the script wrote (newer than its config.yaml) as an image, every
    table ({results file: [outputs.Table]}) as a wandb.Table, and the summary's top-level
    numbers as the run summary."""
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
    for name, found in tables.items():
        for i, t in enumerate(found):
            if t.rows:
                key = f"tables/{Path(name).stem}" + (f"_{i}" if i else "")
                data = [[_cell(r.get(c)) for c in t.columns] for r in t.rows]
                run.log({key: wandb.Table(columns=t.columns, data=data, allow_mixed_types=True)})
    run.summary.update(
        {k: v for k, v in summary.items() if isinstance(v, (int, float, str)) and v is not None}
    )
    run.finish()
