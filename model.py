"""The matrix-completion model: our BERT encoder plus a linear read-out to one number per entry.

State dict: the encoder under `backbone.` (HF names, see modeling_bert.py), the read-out under
`read_out.`. A checkpoint carries the encoder's config, so `load_checkpoint(path)` rebuilds the
model from the file alone. Checkpoints written by the authors' code (`_backbone.` keys, `epoch`,
`vocab_size`) load too; their head count is not in the file and must be passed in.

What the model is measured by (losses, attention shares, head roles, collapse) is in
measures.py; how an analysis finds and opens its checkpoints is in analysis.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from modeling_bert import BertConfig, BertModel, HookedModule
from utils.config import UserError
from utils.runs import read_checkpoint


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
# Loading: our checkpoints (and exported HF folders, through utils.runs.read_checkpoint) and the
# authors'


def _authors_state_dict(sd: dict, num_attention_heads: int | None) -> tuple[BertConfig, dict]:
    """The authors' state dict (`_backbone.` keys) in our names, with sizes read off the weights."""
    if num_attention_heads is None:
        raise UserError(
            "an authors'-format checkpoint does not record the head count; set "
            "ckpt.num_attention_heads (the paper: 8)"
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
        except (TypeError, ValueError) as e:
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
    if mismatch := state_dict_mismatch(model.state_dict(), sd):
        raise UserError(f"checkpoint {path}: weights do not fit the model ({mismatch})")
    model.load_state_dict(sd)
    return model.to(device).eval(), ckpt


def state_dict_mismatch(expected: dict, given: dict) -> str | None:
    """What keeps `given` from loading into a model whose state dict is `expected`: the first
    missing, unexpected and mis-shaped keys; None when it fits."""
    parts = []
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [
        f"{k} {tuple(given[k].shape)} for {tuple(v.shape)}"
        for k, v in expected.items()
        if k in given and tuple(given[k].shape) != tuple(v.shape)
    ]
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
        if keys:
            more = f" and {len(keys) - 1} more" if len(keys) > 1 else ""
            parts.append(f"{what}: {keys[0]}{more}")
    return "; ".join(parts) or None
