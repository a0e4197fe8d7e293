"""Shared plumbing, one room per concern (each file's docstring says what it holds):

    config.py    strict YAML configs, `--section.key=value` overrides, `--help`, `cli`
    sections.py  the config sections the analyses share: checkpoints (`ckpt`) and data (`data`)
    runtime.py   seeds, the device, memory errors as one line
    metrics.py   the masked MSE; device tensors to logged numbers
    runs.py      atomic writes, checkpoints, a training run's folder (checkpoints, metrics log)
    outputs.py   an output folder's config.yaml, tables, summary.json; printed summaries
    plots.py     figure style, saving, the pyplot entry, loss curves, attention grids
    drop.py      the sudden drop: plateau and drop steps of a loss curve
    tracking.py  Weights & Biases

`import utils` gives the names below; the rooms import each other only downwards in this list
(tracking and plots before outputs, which logs to W&B), never a script.
"""

from utils.config import (
    OVERRIDES_FIELD,
    REPO_ROOT,
    DataRangeError,
    UserError,
    cli,
    config_help,
    config_to_dict,
    load_config,
    opt,
    overrides_slug,
    parse_cli,
    resolve_path,
    run_script,
    split_argv,
)
from utils.drop import detect_drop
from utils.metrics import (
    LOSSES,
    finite_or_none,
    format_matrix,
    masked_mse,
    to_floats,
    to_lists,
)
from utils.outputs import (
    Document,
    Table,
    fmt,
    markdown_table,
    prepare_output,
    print_rows,
    render,
    save_config,
    write_results,
)
from utils.plots import (
    ROLE_COLOURS,
    close_figure,
    loss_figure,
    plot_attention_grid,
    plot_losses,
    plot_style,
    pyplot,
    save_figure,
    text_colour,
)
from utils.runs import (
    CKPT_RE,
    atomic_write,
    atomic_write_bytes,
    atomic_write_text,
    checkpoints,
    make_dir,
    read_checkpoint,
    read_metrics,
    save_checkpoint,
    trim_jsonl,
    write_json,
)
from utils.runtime import allocation_errors, choose_device, seed_everything
from utils.sections import AnalysisData, CkptSection, PrePostCkptSection, StepsCkptSection
from utils.tracking import (
    WANDB_MODES,
    TrainWandbConfig,
    WandbConfig,
    init_wandb,
    log_analysis,
    log_wandb_files,
    log_wandb_step,
    wandb_mode,
    wandb_record,
)

__all__ = [
    "AnalysisData",
    "CKPT_RE",
    "CkptSection",
    "DataRangeError",
    "Document",
    "LOSSES",
    "OVERRIDES_FIELD",
    "PrePostCkptSection",
    "REPO_ROOT",
    "ROLE_COLOURS",
    "StepsCkptSection",
    "Table",
    "TrainWandbConfig",
    "UserError",
    "WANDB_MODES",
    "WandbConfig",
    "allocation_errors",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "checkpoints",
    "choose_device",
    "cli",
    "close_figure",
    "config_help",
    "config_to_dict",
    "detect_drop",
    "finite_or_none",
    "fmt",
    "format_matrix",
    "init_wandb",
    "load_config",
    "log_analysis",
    "log_wandb_files",
    "log_wandb_step",
    "loss_figure",
    "make_dir",
    "markdown_table",
    "masked_mse",
    "opt",
    "overrides_slug",
    "parse_cli",
    "plot_attention_grid",
    "plot_losses",
    "plot_style",
    "prepare_output",
    "print_rows",
    "pyplot",
    "read_checkpoint",
    "read_metrics",
    "render",
    "resolve_path",
    "run_script",
    "save_checkpoint",
    "save_config",
    "save_figure",
    "seed_everything",
    "split_argv",
    "text_colour",
    "to_floats",
    "to_lists",
    "trim_jsonl",
    "wandb_mode",
    "wandb_record",
    "write_json",
    "write_results",
]
