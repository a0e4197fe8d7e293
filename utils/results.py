"""What a script leaves in its output folder: the resolved config, tables (rows, written as
Markdown and logged to W&B as tables), summary.json written last, and the short text a person
reads on the terminal (aligned rows, a matrix beside its truth)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from utils.config import UserError, config_to_dict, resolve_path
from utils.files import atomic_write_text, make_dir, write_json
from utils.tracking import log_analysis


def fmt(x: Any, digits: int = 3) -> str:
    """A number for a table, a figure or a line of text: floats to `digits` significant digits,
    '—' for None, anything else as it prints."""
    if x is None:
        return "—"
    return f"{x:.{digits}g}" if isinstance(x, float) else str(x)


def markdown_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """Rows of dicts as a Markdown table; floats to 4 significant digits, None as '—'."""
    columns = columns or list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c), 4) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


@dataclasses.dataclass
class Table:
    """One table of a results file: its rows (dicts) and the columns shown, in order (default:
    the first row's keys). Written as Markdown; with W&B on, logged as a wandb.Table."""

    rows: list[dict]
    columns: list[str] | None = None

    def __post_init__(self) -> None:
        self.columns = list(self.columns or (self.rows[0] if self.rows else []))

    def markdown(self) -> str:
        return markdown_table(self.rows, self.columns) if self.rows else "(no rows)\n"


Document = list[str | Table]  # a results file: paragraphs and tables, in order


def render(document: Document) -> str:
    """A results file as Markdown: paragraphs and tables separated by blank lines."""
    parts = [p.markdown() if isinstance(p, Table) else p.strip("\n") + "\n" for p in document]
    return "\n".join(parts)


def prepare_output(out_dir: str | Path, cfg: Any) -> Path:
    """Create the output folder (anchored at the repo root) and save the resolved config there.
    Call it only once every input has been checked: it writes config.yaml. A folder whose
    config.yaml names another source of checkpoints (an analysis of another run) is refused, so
    that two runs' figures never mix; the same run's results are replaced."""
    path = resolve_path(out_dir)
    previous = path / "config.yaml"
    if hasattr(cfg, "source") and previous.is_file():
        try:
            ckpt = (yaml.safe_load(previous.read_text()) or {}).get("ckpt") or {}
        except (yaml.YAMLError, UnicodeDecodeError, AttributeError):
            ckpt = {}
        files = [ckpt.get(k) for k in ("path", "pre_path", "post_path")] + ckpt.get("paths", [])
        theirs = source(ckpt.get("run", ""), files) if ckpt.get("run") or any(files) else None
        if theirs is not None and theirs != cfg.source():
            raise UserError(
                f"{path} holds results of another run ({theirs}); choose another --out_dir "
                "(nothing was written)"
            )
    path = make_dir(path, "out_dir")
    save_config(cfg, path)
    return path


def save_config(cfg: Any, out_dir: Path) -> None:
    atomic_write_text(out_dir / "config.yaml", yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def write_results(
    out_dir: Path, summary: dict, documents: dict[str, Document], cfg: Any = None, script: str = ""
) -> None:
    """An analysis's outputs: each results file (name → paragraphs and tables) as Markdown, then
    summary.json, written last so that its presence means the run finished; then, when
    `cfg.wandb.log` is on, all of it (and the figures) as a W&B run of job type `script`
    (tracking.log_analysis), each Table from its rows."""
    for name, document in documents.items():
        atomic_write_text(out_dir / name, render(document))
    write_json(out_dir / "summary.json", summary)
    if cfg is not None:
        tables = {name: [t for t in doc if isinstance(t, Table)] for name, doc in documents.items()}
        log_analysis(cfg, script, out_dir, summary, tables)


def print_rows(rows: list[tuple[str, Any]]) -> None:
    """`name  value` lines, aligned: the short summary a script prints."""
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {v if isinstance(v, str) else fmt(v, 4)}" for k, v in rows))


def source(run: str, files: list[str | None]) -> str:
    """Where a ckpt section's models come from: the files it names, else the run folder."""
    named = [str(resolve_path(f)) for f in files if f]
    return ", ".join(named) if named else str(resolve_path(run))


def source_name(run: str, files: list[str | None]) -> str:
    """The name an output folder takes after that source: the run folder's (or, for files, the
    first file's folder's)."""
    named = [f for f in files if f]
    return resolve_path(named[0]).parent.name if named else resolve_path(run).name
