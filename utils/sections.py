"""The config sections every analysis script shares: which checkpoints (`ckpt`) and which data
(`data`) it runs on. See the `ckpt` and `data` sections of configs/*.yaml."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from utils.config import UserError, opt, resolve_path
from utils.tracking import WandbConfig


def _check_heads_option(heads: int | None) -> None:
    if heads is not None and heads < 1:
        raise UserError(f"'ckpt.num_attention_heads' must be ≥ 1 or null, got {heads}")


def source(run: str, files: list[str | None]) -> str:
    """Where a ckpt section's models come from: the files it names, else the run folder."""
    named = [str(resolve_path(f)) for f in files if f]
    return ", ".join(named) if named else str(resolve_path(run))


def source_name(run: str, files: list[str | None]) -> str:
    """The name an output folder takes after that source: the run folder's (or, for files, the
    first file's folder's)."""
    named = [f for f in files if f]
    return resolve_path(named[0]).parent.name if named else resolve_path(run).name


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

    def files(self) -> list[str | None]:
        return [self.pre_path, self.post_path]

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
