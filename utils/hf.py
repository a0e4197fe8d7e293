"""HuggingFace-format model folders: config.json, model.safetensors and a model card, which
`transformers.AutoModelForTokenClassification.from_pretrained(folder)` loads as a
BertForTokenClassification with one label (its `bert.*` is our backbone, its `classifier` our
read-out, the one token type's embedding zero), and which utils.runs.read_checkpoint reads back.
The run's data config and step ride along in config.json under `tf_matcomp`. Needs safetensors
only."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from utils.config import UserError
from utils.files import atomic_write, atomic_write_text

CONFIG, WEIGHTS, CARD = "config.json", "model.safetensors", "README.md"
TOKEN_TYPES = "bert.embeddings.token_type_embeddings.weight"


def is_hf_folder(path: Path) -> bool:
    return Path(path).is_dir() and (Path(path) / WEIGHTS).is_file()


def hf_config(model_config: dict, meta: dict) -> dict:
    """config.json of a BertForTokenClassification with our encoder's sizes and no dropout."""
    c = model_config
    return {
        "architectures": ["BertForTokenClassification"],
        "model_type": "bert",
        "vocab_size": c["vocab_size"],
        "hidden_size": c["hidden_size"],
        "num_hidden_layers": c["num_hidden_layers"],
        "num_attention_heads": c["num_attention_heads"],
        "intermediate_size": c["intermediate_size"],
        "hidden_act": c["hidden_act"],
        "hidden_dropout_prob": c["hidden_dropout_prob"],
        "attention_probs_dropout_prob": c["attention_probs_dropout_prob"],
        "classifier_dropout": None,
        "max_position_embeddings": c["max_position_embeddings"],
        "type_vocab_size": 1,
        "initializer_range": c["initializer_range"],
        "layer_norm_eps": c["layer_norm_eps"],
        "pad_token_id": c["pad_token_id"],
        "position_embedding_type": "absolute",
        "num_labels": 1,
        "id2label": {"0": "value"},
        "label2id": {"value": 0},
        "torch_dtype": "float32",
        "tf_matcomp": {"model_config": c, **meta},
    }


def write_hf_folder(
    out: Path, state_dict: dict, model_config: dict, meta: dict, card: str
) -> list[Path]:
    """Our state dict (backbone.*, read_out.*) in HF's names, with the config and the card."""
    from safetensors.torch import save

    tensors = {}
    for key, value in state_dict.items():
        name = key.replace("backbone.", "bert.", 1).replace("read_out.", "classifier.", 1)
        tensors[name] = value.detach().float().cpu().contiguous()
    tensors[TOKEN_TYPES] = torch.zeros(1, model_config["hidden_size"])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / WEIGHTS, lambda f: f.write(save(tensors, metadata={"format": "pt"})))
    atomic_write_text(out / CONFIG, json.dumps(hf_config(model_config, meta), indent=2) + "\n")
    atomic_write_text(out / CARD, card)
    return [out / WEIGHTS, out / CONFIG, out / CARD]


def read_hf_folder(path: Path, device: str | torch.device = "cpu") -> dict:
    """A checkpoint dict as our checkpoints hold it (model in our names, model_config, the
    run's config with its data section, step) from a folder `write_hf_folder` made; a token-type
    embedding is folded into the positions (HF adds it at every position: exact)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    try:
        meta = json.loads((path / CONFIG).read_text())["tf_matcomp"]
        tensors = load_file(path / WEIGHTS, device=str(device))
    except FileNotFoundError as e:
        raise UserError(
            f"{path} is not a complete model folder ({Path(e.filename).name})"
        ) from None
    except (json.JSONDecodeError, KeyError, TypeError):
        raise UserError(f"{path}/{CONFIG} is not a tf-matcomp export (no 'tf_matcomp')") from None
    except SafetensorError as e:
        raise UserError(f"{path}/{WEIGHTS} is corrupt ({e})") from None
    token_types = tensors.pop(TOKEN_TYPES, None)
    model = {}
    for key, value in tensors.items():
        if key.endswith("position_ids"):
            continue
        model[key.replace("bert.", "backbone.", 1).replace("classifier.", "read_out.", 1)] = value
    if token_types is not None:
        positions = "backbone.embeddings.position_embeddings.weight"
        model[positions] = model[positions] + token_types[0]
    ckpt = {"model": model, "model_config": meta["model_config"], "step": meta.get("step")}
    ckpt["config"] = {"data": meta.get("data", {})}
    return ckpt
