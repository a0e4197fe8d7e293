"""The GPT variant's decoder, with a softmax / linear attention switch, a KV cache and hooks.

A GPT-2-style decoder as the authors used it (their minGPT copy): learned token and position
embeddings, pre-LayerNorm blocks (eps 1e-5) of causal self-attention and a 4× MLP with tanh-GELU,
a final LayerNorm, and an untied, bias-free read-out to logits over the vocabulary. Weights are
N(0, 0.02) with zero biases; the two residual output projections (`attn.c_proj`, `mlp.c_proj`)
get std 0.02 / √(2 · n_layer). No dropout. The MASK id is an ordinary, trained token here (it is
also a prediction target inside the prompt). Parameter names are minGPT's (`transformer.wte`,
`transformer.h.{i}.attn.c_attn`, ...).

`attention: linear` (the authors' `linear: true`) drops the softmax: the scaled scores q·k/√d,
zeroed above the diagonal, weight the values directly, without normalisation.

Generation keeps each layer's keys and values in a `KVCache`, so each new token costs one
query against the cached keys instead of a pass over the whole sequence; `generate(...,
use_cache=False)` recomputes everything (the authors' way) and gives the same tokens.

Hook points (the mechanism of modeling_bert.py: `model.hooks([(name, fn)])`, always removed;
`act_name(kind, layer)` spells the names). B batch, T positions in this call, S positions seen so
far including these (S = T without a cache), D width, H heads, d = D / H, `{i}` the 0-based layer:
    hook_embed                                 [B, T, D]     token + position embeddings
    transformer.h.{i}.hook_resid_pre           [B, T, D]     block input
    transformer.h.{i}.attn.hook_q / hook_k / hook_v  [B, T, H, d]
    transformer.h.{i}.attn.hook_attn_scores    [B, H, T, S]  q·k/√d, before the causal mask
    transformer.h.{i}.attn.hook_pattern        [B, H, T, S]  softmax of the masked scores; for
                                                             linear attention the masked scores
    transformer.h.{i}.attn.hook_z              [B, T, H, d]  per-head output, before c_proj
    transformer.h.{i}.hook_attn_out            [B, T, D]     attention output projection
    transformer.h.{i}.hook_resid_mid           [B, T, D]     resid_pre + attn_out
    transformer.h.{i}.mlp.hook_mlp_post        [B, T, 4D]    GELU activations
    transformer.h.{i}.hook_mlp_out             [B, T, D]     MLP output projection
    transformer.h.{i}.hook_resid_post          [B, T, D]     resid_mid + mlp_out
Softmax attention without a hook on the scores or the pattern runs through
`F.scaled_dot_product_attention`; with one, the pattern is materialised (same function).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from modeling_bert import HookedModule, HookPoint
from modeling_bert import act_name as bert_act_name
from utils.config import UserError, opt
from utils.runs import read_checkpoint

ATTENTIONS = ("softmax", "linear")


@dataclass
class GPTConfig:
    """minGPT's field names; the sizes the data fixes are derived, never typed."""

    n_layer: int = opt(2, "decoder blocks")
    n_head: int = opt(2, "heads per block; must divide n_embd")
    n_embd: int = opt(256, "width D of the residual stream (the MLP is 4·D wide)")
    attention: str = opt(
        "softmax", "softmax, or linear: no softmax (the authors' `linear: true`)", ATTENTIONS
    )
    layer_norm_eps: float = opt(1e-5, "LayerNorm epsilon")
    initializer_range: float = opt(0.02, "std of the normal initialisation")
    vocab_size: int = opt(405, "token ids; derived from the data section", derived=True)
    block_size: int = opt(99, "positions (2·m·n + 1); derived from the data section", derived=True)

    def __post_init__(self) -> None:
        for name in ("n_layer", "n_head", "n_embd", "vocab_size", "block_size"):
            if getattr(self, name) < 1:
                raise UserError(f"'model.{name}' must be positive, got {getattr(self, name)}")
        if self.n_embd % self.n_head != 0:
            raise UserError(
                f"'model.n_embd' = {self.n_embd} is not divisible by 'model.n_head' = {self.n_head}"
            )
        if self.layer_norm_eps <= 0 or self.initializer_range <= 0:
            raise UserError("'model.layer_norm_eps' and 'model.initializer_range' must be positive")

    def to_dict(self) -> dict:
        return asdict(self)


HOOK_KINDS = {
    "embed": "hook_embed",
    "resid_pre": "transformer.h.{i}.hook_resid_pre",
    "q": "transformer.h.{i}.attn.hook_q",
    "k": "transformer.h.{i}.attn.hook_k",
    "v": "transformer.h.{i}.attn.hook_v",
    "attn_scores": "transformer.h.{i}.attn.hook_attn_scores",
    "pattern": "transformer.h.{i}.attn.hook_pattern",
    "z": "transformer.h.{i}.attn.hook_z",
    "attn_out": "transformer.h.{i}.hook_attn_out",
    "resid_mid": "transformer.h.{i}.hook_resid_mid",
    "mlp_post": "transformer.h.{i}.mlp.hook_mlp_post",
    "mlp_out": "transformer.h.{i}.hook_mlp_out",
    "resid_post": "transformer.h.{i}.hook_resid_post",
}


def act_name(kind: str, layer: int | None = None) -> str:
    """The hook point name for `kind` (a key of HOOK_KINDS) at 0-based `layer`."""
    return bert_act_name(kind, layer, HOOK_KINDS)


class KVCache:
    """Keys and values of every layer for the positions seen so far, in preallocated buffers.

    Each block's attention calls `update` with its new keys and values; the model advances
    `length` once all blocks have run.
    """

    def __init__(self, n_layer: int, max_length: int):
        self.n_layer, self.max_length = n_layer, max_length
        self.length = 0
        self.k: torch.Tensor | None = None  # [L, B, H, max_length, d]
        self.v: torch.Tensor | None = None

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v [B, H, T, d] after the cached positions; return all of them [B, H, S, d]."""
        if self.k is None:
            b, h, _, d = k.shape
            shape = (self.n_layer, b, h, self.max_length, d)
            self.k = k.new_empty(shape)
            self.v = v.new_empty(shape)
        end = self.length + k.shape[2]
        if end > self.max_length:
            raise ValueError(f"KVCache holds {self.max_length} positions; {end} asked for")
        self.k[layer, :, :, self.length : end] = k
        self.v[layer, :, :, self.length : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


def causal_allowed(t: int, past: int, device: torch.device) -> torch.Tensor:
    """[T, past + T] bool: query i (absolute position past + i) may see keys 0 .. past + i."""
    keys = torch.arange(past + t, device=device)
    return keys[None, :] <= (past + torch.arange(t, device=device))[:, None]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.n_head = config.n_head
        self.head_dim = config.n_embd // config.n_head
        self.linear = config.attention == "linear"
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.hook_q, self.hook_k, self.hook_v = HookPoint(), HookPoint(), HookPoint()
        self.hook_attn_scores = HookPoint()
        self.hook_pattern = HookPoint()
        self.hook_z = HookPoint()

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.n_head, self.head_dim)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.c_attn(x).split(d, dim=2)
        q = self.hook_q(self._heads(q)).transpose(1, 2)  # [B, H, T, d]
        k = self.hook_k(self._heads(k)).transpose(1, 2)
        v = self.hook_v(self._heads(v)).transpose(1, 2)
        past = 0
        if cache is not None:
            past = cache.length
            k, v = cache.update(self.layer, k, v)
        if self.linear or self.hook_attn_scores.fns or self.hook_pattern.fns:
            scores = self.hook_attn_scores(q @ k.transpose(-1, -2) / math.sqrt(self.head_dim))
            allowed = causal_allowed(t, past, x.device)
            if self.linear:
                pattern = scores.masked_fill(~allowed, 0.0)
            else:
                pattern = scores.masked_fill(~allowed, float("-inf")).softmax(dim=-1)
            z = self.hook_pattern(pattern) @ v
        elif past == 0:
            z = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif t == 1:  # one new query sees every cached key
            z = F.scaled_dot_product_attention(q, k, v)
        else:  # is_causal aligns the mask top-left, wrong after a cache: pass it explicitly
            z = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_allowed(t, past, x.device))
        z = self.hook_z(z.transpose(1, 2))  # [B, T, H, d]
        return self.c_proj(z.reshape(b, t, d))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.hook_mlp_post = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.hook_mlp_post(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    """Pre-LayerNorm: x + attn(ln_1(x)), then + mlp(ln_2(·))."""

    def __init__(self, config: GPTConfig, layer: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.attn = CausalSelfAttention(config, layer)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.mlp = MLP(config)
        self.hook_resid_pre = HookPoint()
        self.hook_attn_out = HookPoint()
        self.hook_resid_mid = HookPoint()
        self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        x = self.hook_resid_pre(x)
        x = self.hook_resid_mid(x + self.hook_attn_out(self.attn(self.ln_1(x), cache)))
        return self.hook_resid_post(x + self.hook_mlp_out(self.mlp(self.ln_2(x))))


class GPT(HookedModule):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            {
                "wte": nn.Embedding(config.vocab_size, config.n_embd),
                "wpe": nn.Embedding(config.block_size, config.n_embd),
                "h": nn.ModuleList(Block(config, i) for i in range(config.n_layer)),
                "ln_f": nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps),
            }
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.hook_embed = HookPoint()
        self.setup_hooks()
        self.apply(self._init_weights)
        std = config.initializer_range / math.sqrt(2 * config.n_layer)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # the projections that write to the residual
                nn.init.normal_(p, std=std)

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, input_ids: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """input_ids [B, T] -> logits [B, T, vocab]; with `cache`, positions follow the cached
        ones, whose keys and values are reused and extended by these."""
        t = input_ids.shape[1]
        past = 0 if cache is None else cache.length
        if past + t > self.config.block_size:
            raise UserError(
                f"{past + t} positions exceed the model's {self.config.block_size} (block_size)"
            )
        positions = torch.arange(past, past + t, device=input_ids.device)
        x = self.hook_embed(self.transformer.wte(input_ids) + self.transformer.wpe(positions))
        for block in self.transformer.h:
            x = block(x, cache)
        if cache is not None:
            cache.length += t
        return self.lm_head(self.transformer.ln_f(x))


@torch.no_grad()
def generate(
    model: GPT,
    prompt: torch.Tensor,
    new_tokens: int,
    allowed: tuple[int, int] | None = None,
    use_cache: bool = True,
) -> torch.Tensor:
    """Greedy continuation [B, new_tokens] of `prompt` [B, P].

    `allowed` = (first, last) restricts the argmax to that id range (the completion holds only
    value tokens; the authors' argmax ran over every id, which agrees once the model is trained).
    With `use_cache`, the prompt runs once and each later step feeds one token against the cache.
    """
    if new_tokens < 1:
        return prompt.new_empty((prompt.shape[0], 0))
    lo, hi = allowed if allowed is not None else (0, model.config.vocab_size - 1)
    cache = KVCache(model.config.n_layer, prompt.shape[1] + new_tokens - 1) if use_cache else None
    seq, logits = prompt, model(prompt, cache)[:, -1]
    out = []
    for i in range(new_tokens):
        token = logits[:, lo : hi + 1].argmax(dim=-1, keepdim=True) + lo  # [B, 1]
        out.append(token)
        if i + 1 == new_tokens:
            break
        if use_cache:
            logits = model(token, cache)[:, -1]
        else:
            seq = torch.cat([seq, token], dim=1)
            logits = model(seq)[:, -1]
    return torch.cat(out, dim=1)


def load_gpt(path: str | Path, device: str | torch.device = "cpu") -> tuple[GPT, dict]:
    """(model, checkpoint) from a `src/gpt/train.py` checkpoint; its config rebuilds the model."""
    ckpt = read_checkpoint(path, device)
    if "model_config" not in ckpt or "n_layer" not in ckpt["model_config"]:
        raise UserError(f"{path} is not a GPT checkpoint of src/gpt/train.py (no GPT config)")
    model = GPT(GPTConfig(**ckpt["model_config"])).to(device)
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt
