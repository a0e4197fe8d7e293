"""The matrix-completion model: our BERT encoder plus a linear read-out to one number per entry.

State dict: the encoder under `backbone.` (HF names, see modeling_bert.py), the read-out under
`read_out.`. A checkpoint carries the encoder's config, so `load_checkpoint(path)` rebuilds the
model from the file alone. Checkpoints written by the authors' code (`_backbone.` keys, `epoch`,
`vocab_size`) load too; their head count is not in the file and must be passed in. Analyses run
the model through `predict` (input ids in chunks) and `evaluate` (the masked MSE over batches).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from data import Batch, DataConfig
from modeling_bert import BertConfig, BertModel, HookedModule, HookFn
from utils import (
    AnalysisData,
    CkptSection,
    UserError,
    finite_or_none,
    masked_mse,
    read_checkpoint,
    resolve_path,
    to_floats,
)


class MatrixBert(HookedModule):
    """Hook names are the encoder's (modeling_bert.py), without a `backbone.` prefix."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.backbone = BertModel(config)
        self.hook_points = self.backbone.hook_points
        # Like the authors' model, the read-out keeps PyTorch's default Linear initialisation
        # (HF's N(0, 0.02) init applies only to modules inside BertModel).
        self.read_out = nn.Linear(config.hidden_size, 1)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids [B, T] -> predicted entries [B, T]."""
        return self.read_out(self.backbone(input_ids).last_hidden_state).squeeze(-1)


def check_fits(config: BertConfig, vocab_size: int, max_tokens: int) -> None:
    """The model can take this data: every token id and every position has an embedding."""
    if vocab_size > config.vocab_size:
        raise UserError(
            f"data needs {vocab_size} token ids but the model has {config.vocab_size}; "
            "the vocabulary settings (prec, min_vocab, max_vocab) differ from training"
        )
    if max_tokens > config.max_position_embeddings:
        raise UserError(
            f"matrices of {max_tokens} entries exceed the model's "
            f"{config.max_position_embeddings} position embeddings"
        )


# ----------------------------------------------------------------------------------------------
# Predicting and evaluating: what every analysis runs the model through


@torch.no_grad()
def predict(
    model: nn.Module, input_ids: torch.Tensor, batch_size: int, device: str | torch.device
) -> torch.Tensor:
    """Predictions [B, T] (float32, on the CPU) of `model` (anything mapping input ids [B, T] to
    predictions), `batch_size` matrices per forward pass on `device`."""
    chunks = input_ids.split(batch_size)
    return torch.cat([model(ids.to(device)).float().cpu() for ids in chunks])


def batch_losses(preds: list[torch.Tensor], batches: list[Batch]) -> dict[str, float | None]:
    """utils.masked_mse of predictions (one [B, T] tensor per batch) over all the batches at once,
    so every entry weighs the same whatever the batch sizes; floats, None for an empty set."""

    def flat(xs: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([x.flatten() for x in xs])

    target, observed = flat([b.target for b in batches]), flat([b.observed for b in batches])
    metrics = to_floats(masked_mse(flat(preds), target, observed))
    return {k: finite_or_none(v) for k, v in metrics.items()}


@torch.no_grad()
def evaluate(
    model: MatrixBert, batches: list[Batch], hooks: list[tuple[str, HookFn]] = ()
) -> dict[str, float | None]:
    """utils.masked_mse over `batches` (`loss`, `loss_obs`, `loss_mask`, `mask_value`), one forward
    pass per batch with `hooks` in place (a batch-mean ablation averages over one batch)."""
    with model.hooks(list(hooks)):
        preds = [model(b.input_ids) for b in batches]
    return batch_losses(preds, batches)


# ----------------------------------------------------------------------------------------------
# Loading


def _authors_state_dict(sd: dict, num_attention_heads: int | None) -> tuple[BertConfig, dict]:
    """The authors' state dict (`_backbone.` keys) in our names, with sizes read off the weights."""
    if num_attention_heads is None:
        raise UserError(
            "an authors'-format checkpoint does not record the head count; set "
            "model.num_attention_heads (the paper: 8)"
        )
    sd = {k.replace("_backbone.", "backbone.", 1): v for k, v in sd.items()}
    sd = {k: v for k, v in sd.items() if not k.endswith(("position_ids", "token_type_ids"))}
    tt = sd.pop("backbone.embeddings.token_type_embeddings.weight", None)
    if tt is not None:  # HF adds token type 0 at every position: fold it in, exactly
        sd["backbone.embeddings.position_embeddings.weight"] = (
            sd["backbone.embeddings.position_embeddings.weight"] + tt[0]
        )
    layers = {int(m.group(1)) for k in sd if (m := re.match(r"backbone\.encoder\.layer\.(\d+)", k))}
    vocab, hidden = sd["backbone.embeddings.word_embeddings.weight"].shape
    config = BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=len(layers),
        num_attention_heads=num_attention_heads,
        intermediate_size=sd["backbone.encoder.layer.0.intermediate.dense.weight"].shape[0],
        max_position_embeddings=sd["backbone.embeddings.position_embeddings.weight"].shape[0],
    )
    return config, sd


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu", num_attention_heads: int | None = None
) -> tuple[MatrixBert, dict]:
    """(model in eval mode on `device`, the checkpoint dict) from one of our checkpoints or the
    authors'. `num_attention_heads` is used for the authors' format only."""
    ckpt = read_checkpoint(path, device)
    sd = ckpt["model"]
    if "model_config" in ckpt:
        try:
            config = BertConfig(**ckpt["model_config"])
        except TypeError as e:
            raise UserError(
                f"checkpoint {path}: model_config does not fit this code ({e})"
            ) from None
    elif any(k.startswith("_backbone.") for k in sd):
        config, sd = _authors_state_dict(sd, num_attention_heads)
        if "epoch" in ckpt:  # their 0-based loop index: `epoch` + 1 updates were done
            ckpt.setdefault("step", int(ckpt["epoch"]) + 1)
    else:
        raise UserError(f"checkpoint {path} has neither model_config nor authors'-format weights")
    model = MatrixBert(config)
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise UserError(f"checkpoint {path}: weights do not fit the model ({first})") from None
    return model.to(device).eval(), ckpt


# ----------------------------------------------------------------------------------------------
# What analysis scripts load: a `ckpt` section, and data defaulting to the checkpoint's own


def checkpoint_path(section: CkptSection, step: int | None = None) -> Path:
    """The file a `ckpt` section names: `path`, or `run`/step_NNNNNN.pt (`step` overrides the
    section's; neither given: the last checkpoint in `run`)."""
    if section.path:
        return resolve_path(section.path)
    run = resolve_path(section.run)
    step = section.step if step is None else step
    hint = (
        f"make it with: python3 train.py --config configs/train.yaml --train.out_dir={section.run}"
        + (f" (with {step} in train.save_steps)" if step is not None else "")
    )
    if step is None:
        found = sorted(run.glob("step_*.pt")) if run.is_dir() else []
        if not found:
            raise UserError(f"no checkpoints in {run}; {hint}")
        return found[-1]
    path = run / f"step_{step:06d}.pt"
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found; {hint}")
    return path


def load_from_section(
    section: CkptSection, device: str | torch.device = "cpu", step: int | None = None
) -> tuple[MatrixBert, dict]:
    """(model in eval mode, checkpoint) for a `ckpt` section, at `step` if given."""
    path = checkpoint_path(section, step)
    return load_checkpoint(path, device, section.num_attention_heads)


def trained_data_config(ckpt: dict) -> DataConfig:
    """The data section the checkpoint was trained on (the paper's for an authors' checkpoint)."""
    saved = ckpt.get("config", {}).get("data")
    return DataConfig(**saved) if saved else DataConfig()


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
