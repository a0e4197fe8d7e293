"""HuggingFace-format model folders: config.json, model.safetensors and a model card, which
`transformers.AutoModelForTokenClassification.from_pretrained(folder)` loads as a
BertForTokenClassification with one label (its `bert.*` is our backbone, its `classifier` our
read-out, the one token type's embedding zero), and which utils.runs.read_checkpoint reads back.
The run's data config and step ride along in config.json under `tf_matcomp`. Needs safetensors
only."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

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


# config.json keys that must agree with the encoder config under `tf_matcomp` (transformers builds
# the model from the former, we from the latter: a folder where they differ loads differently)
SHARED_KEYS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "max_position_embeddings",
    "layer_norm_eps",
    "pad_token_id",
)
STEP_FOLDER = re.compile(r"^step_(\d+)$")


def _meta(path: Path, config: Any) -> dict:
    """`tf_matcomp` of a config.json, required whole, agreeing with config.json's own sizes."""
    where = f"{path}/{CONFIG}"
    meta = config.get("tf_matcomp") if isinstance(config, dict) else None
    if not isinstance(meta, dict):
        raise UserError(f"{where} is not a tf-matcomp export (no 'tf_matcomp' mapping)")
    for key, kind in (("model_config", dict), ("data", dict), ("step", int)):
        if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
            raise UserError(f"{where}: tf_matcomp.{key} is missing or not a {kind.__name__}")
    for key in SHARED_KEYS:
        if config.get(key) != meta["model_config"].get(key):
            raise UserError(
                f"{where}: {key} is {config.get(key)!r} but tf_matcomp.model_config says "
                f"{meta['model_config'].get(key)!r} (transformers would build another model)"
            )
    name = STEP_FOLDER.match(path.name)
    if name and int(name.group(1)) != meta["step"]:
        raise UserError(
            f"{path}: the folder's name says step {int(name.group(1))}, its config.json step "
            f"{meta['step']}"
        )
    return meta


def read_hf_folder(path: Path, device: str | torch.device = "cpu") -> dict:
    """A checkpoint dict as our checkpoints hold it (model in our names, model_config, the
    run's config with its data section, step) from a folder `write_hf_folder` made, checked as
    transformers would check it (config.json's sizes, floating-point weights) and against the
    folder's name; a token-type embedding is folded into the positions (HF adds it at every
    position: exact)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    try:
        config = json.loads((path / CONFIG).read_text())
        tensors = load_file(path / WEIGHTS, device=str(device))
    except FileNotFoundError as e:
        raise UserError(
            f"{path} is not a complete model folder ({Path(e.filename).name})"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{path}/{CONFIG} is not valid JSON") from None
    except SafetensorError as e:
        raise UserError(f"{path}/{WEIGHTS} is corrupt ({e})") from None
    meta = _meta(path, config)
    token_types = tensors.pop(TOKEN_TYPES, None)
    model = {}
    for key, value in tensors.items():
        if key.endswith("position_ids"):
            continue
        if not value.is_floating_point():
            raise UserError(f"{path}/{WEIGHTS}: {key} holds {value.dtype}, not floating point")
        model[key.replace("bert.", "backbone.", 1).replace("classifier.", "read_out.", 1)] = value
    if token_types is not None:
        positions = "backbone.embeddings.position_embeddings.weight"
        if positions in model:
            model[positions] = model[positions] + token_types[0].to(model[positions].dtype)
    ckpt = {"model": model, "model_config": meta["model_config"], "step": meta["step"]}
    ckpt["config"] = {"data": meta["data"]}
    return ckpt
