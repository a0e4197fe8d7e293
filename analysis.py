"""What every analysis script shares before it measures anything: its config head (the `ckpt`
and `data` sections, seed, device, out_dir, wandb), the layers and heads a config names (checked,
or found by role), and `open_analysis`: every checkpoint found, then loaded, the data it runs on
checked against every model, a seeded sampler.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch

from data import Batch, DataConfig, MatrixSampler
from measures import ROLE_MIN_SHARE, ROLE_RULE, attention_summary, heads_with_role
from model import MatrixBert, check_fits, load_checkpoint
from modeling_bert import BertConfig
from utils.config import UserError, opt, resolve_path
from utils.device import choose_device, seed_everything
from utils.results import source, source_name
from utils.runs import checkpoints
from utils.tracking import WandbConfig

# ----------------------------------------------------------------------------------------------
# The config sections every analysis shares: which checkpoints (`ckpt`) and which data (`data`)


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

    def files(self) -> list[str | None]:
        return [self.path]


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

    def files(self) -> list[str | None]:
        return list(self.paths)

    def sections(self) -> list[CkptSection]:
        """One `ckpt` section per checkpoint, for analysis.load_from_section."""
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

    def files(self) -> list[str | None]:
        return [self.pre_path, self.post_path]

    def sections(self) -> dict[str, CkptSection]:
        """{"pre": section, "post": section}, for analysis.load_from_section."""
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


@dataclass
class AnalysisConfig:
    """The head every analysis config starts with; a script's config extends it with its own
    section (and may narrow `ckpt` to several checkpoints), and names its `script`, the folder
    its outputs go to by default: results/<the training run's folder name>/<script>."""

    script: ClassVar[str] = "analysis"

    seed: int = opt(0, "seed of the sampled matrices (the same for every checkpoint)")
    device: str = opt("auto", "auto (cuda, mps, cpu) or a torch device name")
    out_dir: str | None = opt(
        None,
        "output folder (relative: the repo root); null: results/<run folder name>/<script>. "
        "A folder holding another run's results is refused",
    )
    ckpt: CkptSection = field(default_factory=CkptSection)
    data: AnalysisData = field(default_factory=AnalysisData)
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def finalize(self, config_path: Path | None = None) -> None:
        if self.out_dir is None:
            self.out_dir = f"results/{source_name(self.ckpt.run, self.ckpt.files())}/{self.script}"

    def source(self) -> str:
        """Where this analysis's models come from (what an output folder is tied to)."""
        return source(self.ckpt.run, self.ckpt.files())


# ----------------------------------------------------------------------------------------------
# The layers, heads and positions a config names (0-based), checked before any hook uses them


def resolve_indices(values: list[int] | None, size: int, key: str) -> list[int] | None:
    """Indices (layers, heads or positions) checked against `size`, negative ones counted from the
    end; None (all) stays None. An error names the config `key`."""
    if values is None:
        return None
    out = []
    for v in values:
        if not -size <= v < size:
            raise UserError(f"'{key}' has {v}, outside 0..{size - 1} (or -{size}..-1 from the end)")
        out.append(v % size)
    return out


def check_heads(pairs: list[list[int]], config: BertConfig, key: str) -> list[tuple[int, int]]:
    """[layer, head] pairs checked against the model; an error names the config `key`."""
    out = []
    for pair in pairs:
        if len(pair) != 2:
            raise UserError(f"'{key}': expected [layer, head], got {pair}")
        layer, head = pair
        if not 0 <= layer < config.num_hidden_layers:
            raise UserError(f"'{key}': layer {layer} outside 0..{config.num_hidden_layers - 1}")
        if not 0 <= head < config.num_attention_heads:
            raise UserError(f"'{key}': head {head} outside 0..{config.num_attention_heads - 1}")
        out.append((layer, head))
    return out


ROLE_SPECS = ("row", "column", "self", "row+column")


def resolve_heads(
    spec: list[list[int]] | str, model: MatrixBert, batches: list[Batch], key: str
) -> tuple[list[tuple[int, int]], dict]:
    """The heads a config names: [layer, head] pairs (0-based, checked against the model), or a
    role from ROLE_SPECS resolved on `batches` by ROLE_RULE, so that a script takes this
    model's own row or column heads rather than indices from another run. Returns the pairs
    and a note of how they were chosen (for the summary)."""
    if isinstance(spec, str):
        if spec not in ROLE_SPECS:
            raise UserError(
                f"'{key}' = {spec!r}: not a role (valid: {', '.join(ROLE_SPECS)}) "
                "or a list of [layer, head] pairs"
            )
        found = attention_summary(model, batches)
        roles = found["roles"]
        pairs = [p for role in spec.split("+") for p in heads_with_role(roles, role)]
        if not pairs:
            shares = found["shares"]
            best = ", ".join(f"{k} {shares[k].max().item():.2f}" for k in ("row", "col", "self"))
            raise UserError(
                f"'{key}' = {spec!r}: this checkpoint has no such heads (a head needs a share "
                f"above {ROLE_MIN_SHARE}; the largest here: {best}); name heads as "
                "[layer, head] pairs"
            )
        return sorted(pairs), {"by_role": spec, "rule": ROLE_RULE, "roles": roles}
    try:
        return check_heads(spec, model.config, key), {"by_role": None}
    except UserError as e:
        raise UserError(f"{e}; or name heads by role: {', '.join(ROLE_SPECS)}") from None


# ----------------------------------------------------------------------------------------------
# Opening: the checkpoints a `ckpt` section names, and data defaulting to the checkpoint's own


def checkpoint_path(section: CkptSection, step: int | None = None) -> Path:
    """The checkpoint a `ckpt` section names: `path`, or `run`/step_NNNNNN.pt, or an exported
    `run`/step_NNNNNN/ folder in HF format (`step` overrides the section's; neither given: the
    last checkpoint in `run`). A missing one is an error that lists the steps the run holds, or
    says how to make the run."""
    if section.path:
        return resolve_path(section.path)
    run = resolve_path(section.run)
    step = section.step if step is None else step
    found = checkpoints(run) if run.is_dir() else {}
    if not found:
        if run.is_dir():
            raise UserError(
                f"{run} holds no checkpoints; continue its training with --train.resume=true "
                "or point --ckpt.run at a run that has some"
            )
        raise UserError(
            f"no training run in {run}; make it with: python3 train.py --config "
            f"configs/train.yaml --train.out_dir={section.run}"
            + (f" (with {step} in train.save_steps)" if step is not None else "")
        )
    if step is None:
        return found[max(found)]
    if step not in found:
        raise UserError(
            f"checkpoint step_{step:06d}.pt not found in {run}, which holds steps "
            f"{', '.join(map(str, found))}; choose among them (--ckpt.step={max(found)}, or "
            "--ckpt.steps=[...], --ckpt.pre_step / --ckpt.post_step where the script takes several)"
        )
    return found[step]


def load_from_section(
    section: CkptSection, device: str | torch.device = "cpu", step: int | None = None
) -> tuple[MatrixBert, dict]:
    """(model in eval mode, checkpoint) for a `ckpt` section, at `step` if given."""
    path = checkpoint_path(section, step)
    return load_checkpoint(path, device, section.num_attention_heads)


def trained_data_config(ckpt: dict, path: str | Path = "the checkpoint") -> DataConfig:
    """The data section the checkpoint was trained on (the paper's for an authors' checkpoint)."""
    saved = ckpt.get("config", {}).get("data")
    if not saved:
        return DataConfig()
    try:
        return DataConfig(**saved)
    except (TypeError, ValueError) as e:
        raise UserError(f"{path}: its data config does not fit this code ({e})") from None


def analysis_data_config(ckpt: dict, section: AnalysisData, model: MatrixBert) -> DataConfig:
    """The checkpoint's data config with the analysis' non-null overrides, checked against the
    model (vocabulary and positions)."""
    base = trained_data_config(ckpt).__dict__.copy()
    for key in ("m", "n", "rank", "p_mask", "distribution", "scale"):
        value = getattr(section, key)
        if value is not None:
            base[key] = value
    if section.m is not None or section.n is not None:
        base["sizes"] = []
    cfg = DataConfig(**base)
    check_fits(model.config, cfg.vocab_size, cfg.max_tokens)
    return cfg


@dataclass
class Loaded:
    """One checkpoint an analysis runs on: the model (eval mode), the checkpoint dict, and the
    data the analysis draws for it (the checkpoint's own with the `data` section's overrides)."""

    model: MatrixBert
    ckpt: dict
    data: DataConfig

    @property
    def step(self) -> int | None:
        return self.ckpt.get("step")


@dataclass
class Analysis:
    """What `open_analysis` hands a script: the device, every checkpoint loaded and checked, the
    data config every checkpoint takes, and a seeded sampler of it."""

    cfg: AnalysisConfig
    device: torch.device
    loaded: list[Loaded]
    data: DataConfig
    sampler: MatrixSampler

    @property
    def model(self) -> MatrixBert:
        return self.loaded[0].model

    @property
    def ckpt(self) -> dict:
        return self.loaded[0].ckpt

    def batches(self, num_samples: int | None = None, **kwargs) -> list[Batch]:
        """`num_samples` (default `data.num_samples`) fresh m×n matrices in `data.batch_size`
        batches; keyword arguments go to MatrixSampler.sample (observed, p_mask ...)."""
        section = self.cfg.data
        count = section.num_samples if num_samples is None else num_samples
        d = self.data
        return self.sampler.sample_many(count, section.batch_size, d.m, d.n, **kwargs)


def ckpt_sections(section: CkptSection | StepsCkptSection | PrePostCkptSection) -> list:
    """The checkpoints a `ckpt` section names, in order (pre before post)."""
    if isinstance(section, CkptSection):
        return [section]
    found = section.sections()
    return list(found.values()) if isinstance(found, dict) else found


def open_analysis(
    cfg: AnalysisConfig,
    sampler_device: str | torch.device | None = None,
    data_from: int = 0,
    one_size: bool = False,
) -> Analysis:
    """The opening every analysis shares, before it writes anything: seed, device, every
    checkpoint found, then loaded, the data config (of checkpoint `data_from`, with the `data`
    overrides; `one_size` drops a mixture of sizes) checked against every model, and a sampler
    seeded with `cfg.seed` on `sampler_device` (default: the device)."""
    seed_everything(cfg.seed)
    device = choose_device(cfg.device)
    sections = ckpt_sections(cfg.ckpt)
    for section in sections:  # a missing checkpoint stops the script before any loading
        checkpoint_path(section)
    loaded = []
    for section in sections:
        model, ckpt = load_from_section(section, device)
        data = analysis_data_config(ckpt, cfg.data, model)
        if one_size:
            data.sizes = []
        loaded.append(Loaded(model, ckpt, data))
    data = loaded[data_from].data
    for one in loaded:
        check_fits(one.model.config, data.vocab_size, data.max_tokens)
    sampler = MatrixSampler(data, device if sampler_device is None else sampler_device, cfg.seed)
    return Analysis(cfg, device, loaded, data, sampler)
