"""Our BERT encoder, in plain torch, with named hook points for patching and ablation.

Module and parameter names follow HuggingFace's `BertModel` (`embeddings.word_embeddings`,
`encoder.layer.{i}.attention.self.query`, ...), and so does the maths: learned absolute positions,
post-LayerNorm blocks (eps 1e-12), exact (erf) GELU, N(0, 0.02) initialisation with zero biases,
and the padding id 0 (our MASK) whose embedding is zero and never trained. A test checks that
this model equals `transformers.BertModel` on the same weights.

How it differs from HF's `BertModel`:
  - no token-type embeddings (HF adds `token_type_embeddings[0]` to every position; a checkpoint
    that has them folds that row into the position embeddings, which is exact);
  - no pooler, no cross-attention, no KV cache, no relative positions, no head pruning;
  - no `attention_mask`: every position is a matrix entry and attends to every other one;
  - `forward` returns an `EncoderOutput` dataclass (`last_hidden_state`, `hidden_states`,
    `attentions`) rather than a `ModelOutput`; `hidden_states` and `attentions` are filled exactly
    when HF fills them (embedding output first, then one entry per layer);
  - named hook points (below) and the `hooks` context manager, TransformerLens-style;
  - query, key and value are computed by one matmul on their concatenated weights (one larger
    GEMM instead of three small ones; the parameters and their names stay HF's);
  - on a GPU, with no attention-internal hook and `output_attentions=False`, attention runs
    through `F.scaled_dot_product_attention` (the fast path); otherwise, and always on a CPU
    (where SDPA's kernels are the slower ones at these sizes: `SDPA_ON_CPU`), the scores and
    pattern are materialised (the explicit path). Both compute the same function. A hook is
    ours (`hooks`) or torch's (`register_forward_hook` on hook_attn_scores or hook_pattern, or
    a global module hook), so nnsight-style tools see the pattern too.

Hook points, relative to this module; B batch, T positions, D hidden, H heads, d = D / H,
F intermediate size, `{i}` the 0-based layer:
    hook_embed                                   [B, T, D]  embedding output (after LayerNorm)
    encoder.layer.{i}.hook_resid_pre             [B, T, D]  layer input
    encoder.layer.{i}.attention.self.hook_q      [B, T, H, d]
    encoder.layer.{i}.attention.self.hook_k      [B, T, H, d]
    encoder.layer.{i}.attention.self.hook_v      [B, T, H, d]
    encoder.layer.{i}.attention.self.hook_attn_scores  [B, H, T, T]  q·k/√d, before softmax
    encoder.layer.{i}.attention.self.hook_pattern      [B, H, T, T]  softmax of the scores
    encoder.layer.{i}.attention.self.hook_z      [B, T, H, d]  per-head output, before the
                                                             output projection (authors patch here)
    encoder.layer.{i}.attention.hook_attn_out    [B, T, D]  attention output projection
    encoder.layer.{i}.hook_resid_mid             [B, T, D]  LayerNorm(resid_pre + attn_out)
    encoder.layer.{i}.intermediate.hook_mlp_post [B, T, F]  GELU activations
    encoder.layer.{i}.hook_mlp_out               [B, T, D]  MLP output projection
    encoder.layer.{i}.hook_resid_post            [B, T, D]  LayerNorm(resid_mid + mlp_out)
`act_name(kind, layer)` spells these names. A hook is `fn(activation, hook) -> tensor | None`:
returning a tensor replaces the activation; `hook.name` is the point's name. `HookedModule` holds
the mechanism (`hooks`, `run_with_cache`); the GPT variant (src/gpt/model.py) uses it too.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


class BertConfigError(ValueError):
    """A value this encoder cannot take; the config loader reports it as one line."""


def _option(default, help: str, choices: tuple | None = None, derived: bool = False):
    """A config field with the help string and allowed values the project's config loader reads
    (utils.config.opt writes the same metadata; spelt out so that this file needs torch alone)."""
    return field(default=default, metadata={"help": help, "choices": choices, "derived": derived})


@dataclass
class BertConfig:
    """HF `BertConfig` field names; only the fields this encoder uses."""

    vocab_size: int = _option(
        2002, "token ids; derived from the data section, never typed", derived=True
    )
    hidden_size: int = _option(768, "width D of the residual stream")
    num_hidden_layers: int = _option(4, "number of encoder layers")
    num_attention_heads: int = _option(8, "heads per layer; must divide hidden_size")
    intermediate_size: int | None = _option(3072, "MLP width F; null: 4 × hidden_size, as BERT")
    hidden_act: str = _option("gelu", "MLP activation (exact GELU, as HF's 'gelu')", ("gelu",))
    hidden_dropout_prob: float = _option(0.0, "dropout on embeddings and block outputs")
    attention_probs_dropout_prob: float = _option(0.0, "dropout on the attention pattern")
    max_position_embeddings: int = _option(512, "rows of the position table (≥ m·n)")
    layer_norm_eps: float = _option(1e-12, "LayerNorm epsilon")
    initializer_range: float = _option(0.02, "std of the normal initialisation")
    pad_token_id: int = _option(0, "id whose embedding is zero and untrained: MASK", derived=True)

    def __post_init__(self) -> None:
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.hidden_size
        for name in (
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
            "vocab_size",
        ):
            if getattr(self, name) < 1:
                raise BertConfigError(f"'model.{name}' must be ≥ 1, got {getattr(self, name)}")
        if self.hidden_size % self.num_attention_heads != 0:
            raise BertConfigError(
                f"'model.hidden_size' = {self.hidden_size} is not divisible by "
                f"'model.num_attention_heads' = {self.num_attention_heads}"
            )
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise BertConfigError(
                    f"'model.{name}' must be in [0, 1), got {getattr(self, name)}"
                )
        for name in ("layer_norm_eps", "initializer_range"):
            if not 0.0 <= getattr(self, name) < math.inf:
                raise BertConfigError(f"'model.{name}' must be ≥ 0, got {getattr(self, name)}")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise BertConfigError(
                f"'model.pad_token_id' must be a token id, got {self.pad_token_id}"
            )

    def to_dict(self) -> dict:
        return asdict(self)


HOOK_KINDS = {
    "embed": "hook_embed",
    "resid_pre": "encoder.layer.{i}.hook_resid_pre",
    "q": "encoder.layer.{i}.attention.self.hook_q",
    "k": "encoder.layer.{i}.attention.self.hook_k",
    "v": "encoder.layer.{i}.attention.self.hook_v",
    "attn_scores": "encoder.layer.{i}.attention.self.hook_attn_scores",
    "pattern": "encoder.layer.{i}.attention.self.hook_pattern",
    "z": "encoder.layer.{i}.attention.self.hook_z",
    "attn_out": "encoder.layer.{i}.attention.hook_attn_out",
    "resid_mid": "encoder.layer.{i}.hook_resid_mid",
    "mlp_post": "encoder.layer.{i}.intermediate.hook_mlp_post",
    "mlp_out": "encoder.layer.{i}.hook_mlp_out",
    "resid_post": "encoder.layer.{i}.hook_resid_post",
}


def act_name(kind: str, layer: int | None = None, kinds: dict[str, str] = HOOK_KINDS) -> str:
    """The hook point name for `kind` (a key of `kinds`, this model's HOOK_KINDS by default) at
    0-based `layer`."""
    if kind not in kinds:
        raise ValueError(f"unknown hook kind '{kind}' (valid: {', '.join(kinds)})")
    if kind != "embed" and layer is None:
        raise ValueError(f"hook kind '{kind}' needs a layer")
    return kinds[kind].format(i=layer)


HookFn = Callable[[torch.Tensor, "HookPoint"], "torch.Tensor | None"]


class HookPoint(nn.Module):
    """Identity that runs its hooks in order; with none it only returns its input. Torch's own
    module hooks (`register_forward_hook`, what nnsight and most interpretability code use) work
    on it too, as on any module."""

    def __init__(self) -> None:
        super().__init__()
        self.name = ""
        self.fns: list[HookFn] = []

    @property
    def active(self) -> bool:
        """Whether anything would see this point: our hooks, or torch hooks on this module or on
        every module (global ones)."""
        hooks = nn.modules.module
        return bool(
            self.fns
            or self._forward_hooks
            or self._forward_pre_hooks
            or hooks._global_forward_hooks
            or hooks._global_forward_pre_hooks
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for fn in self.fns:
            out = fn(x, self)
            if out is not None:
                x = out
        return x


class HookedModule(nn.Module):
    """A module with named HookPoints inside: `hooks` adds hook functions for the duration of a
    block, `run_with_cache` records activations. Subclasses call `setup_hooks()` once their
    submodules exist (or share another module's `hook_points`)."""

    hook_points: dict[str, HookPoint]

    def setup_hooks(self) -> None:
        self.hook_points = {}
        for name, module in self.named_modules():
            if isinstance(module, HookPoint):
                module.name = name
                self.hook_points[name] = module

    @contextlib.contextmanager
    def hooks(self, fwd_hooks: list[tuple[str, HookFn]]) -> Iterator[None]:
        """Add `(name, fn)` hooks for the duration of the block; they are always removed."""
        added = []
        try:
            for name, fn in fwd_hooks:
                if name not in self.hook_points:
                    raise ValueError(f"no hook point named '{name}' (see act_name)")
                self.hook_points[name].fns.append(fn)
                added.append((name, fn))
            yield
        finally:
            for name, fn in added:
                self.hook_points[name].fns.remove(fn)

    @torch.no_grad()
    def run_with_cache(self, input_ids: torch.Tensor, names: list[str] | None = None):
        """(output, {hook name: activation}) for `names` (default: every hook point)."""
        cache: dict[str, torch.Tensor] = {}
        names = list(self.hook_points) if names is None else names
        with self.hooks(caching_hooks(cache, names)):
            out = self(input_ids)
        return out, cache


class BertEmbeddings(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(
            config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id
        )
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        t = input_ids.shape[1]
        positions = torch.arange(t, device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)
        return self.dropout(self.LayerNorm(x))


# On a CPU, SDPA's kernels are slower than the explicit path at this model's sizes: one
# attention layer's forward and backward, fp32, 2 threads, took 1.73 vs 0.85-1.08 ms at 64 × 4
# heads × 25 positions × 16 and 8.5 vs 7.5 ms at the paper's 16 × 8 × 49 × 96 (docs/results/
# cpu_miniature/speed). Tests set this to compare the two paths.
SDPA_ON_CPU = False


class BertSelfAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        d = config.hidden_size
        self.query = nn.Linear(d, d)
        self.key = nn.Linear(d, d)
        self.value = nn.Linear(d, d)
        self.dropout_p = config.attention_probs_dropout_prob
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)
        self.hook_q, self.hook_k, self.hook_v = HookPoint(), HookPoint(), HookPoint()
        self.hook_attn_scores = HookPoint()
        self.hook_pattern = HookPoint()
        self.hook_z = HookPoint()

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.num_heads, self.head_dim)

    def forward(
        self, x: torch.Tensor, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        b, t, d = x.shape
        weight = torch.cat([self.query.weight, self.key.weight, self.value.weight])
        bias = torch.cat([self.query.bias, self.key.bias, self.value.bias])
        q, k, v = F.linear(x, weight, bias).split(d, dim=-1)
        q = self.hook_q(self._split(q)).transpose(1, 2)  # [B, H, T, d]
        k = self.hook_k(self._split(k)).transpose(1, 2)
        v = self.hook_v(self._split(v)).transpose(1, 2)
        pattern = None
        explicit = q.device.type == "cpu" and not SDPA_ON_CPU
        hooked = self.hook_attn_scores.active or self.hook_pattern.active
        if explicit or output_attentions or hooked:
            scores = self.hook_attn_scores(q @ k.transpose(-1, -2) / math.sqrt(self.head_dim))
            # Softmax in fp32, rounded back to the scores' dtype: the same forward as a bf16
            # softmax (up to 1 ulp), a more exact backward, and on a CPU faster than the bf16
            # kernel (measured in docs/results/tiny_cpu_search).
            pattern = scores.softmax(dim=-1, dtype=torch.float32).to(scores.dtype)
            pattern = self.hook_pattern(pattern)
            z = self.dropout(pattern) @ v
        else:
            p = self.dropout_p if self.training else 0.0
            z = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        z = self.hook_z(z.transpose(1, 2))  # [B, T, H, d]
        return z.reshape(b, t, d), pattern


class BertSelfOutput(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, z: torch.Tensor, residual: torch.Tensor, hook: HookPoint) -> torch.Tensor:
        """LayerNorm(dropout(dense(z)) + residual), as HF's; `hook` (the parent's
        hook_attn_out) sees the projection before dropout and the residual."""
        return self.LayerNorm(self.dropout(hook(self.dense(z))) + residual)


class BertAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertSelfOutput(config)
        self.hook_attn_out = HookPoint()

    def forward(self, x: torch.Tensor, output_attentions: bool = False):
        z, pattern = self.self(x, output_attentions)
        return self.output(z, x, self.hook_attn_out), pattern


class BertIntermediate(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.hook_mlp_post = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hook_mlp_post(F.gelu(self.dense(x)))


class BertOutput(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, h: torch.Tensor, residual: torch.Tensor, hook: HookPoint) -> torch.Tensor:
        """LayerNorm(dropout(dense(h)) + residual), as HF's; `hook` (the layer's hook_mlp_out)
        sees the projection before dropout and the residual."""
        return self.LayerNorm(self.dropout(hook(self.dense(h))) + residual)


class BertLayer(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)
        self.hook_resid_pre = HookPoint()
        self.hook_resid_mid = HookPoint()
        self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, x: torch.Tensor, output_attentions: bool = False):
        x = self.hook_resid_pre(x)
        mid, pattern = self.attention(x, output_attentions)
        mid = self.hook_resid_mid(mid)
        out = self.output(self.intermediate(mid), mid, self.hook_mlp_out)
        return self.hook_resid_post(out), pattern


class BertEncoder(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, x: torch.Tensor, output_attentions: bool = False):
        """(last hidden state, the input and every layer's output, every layer's pattern)."""
        hidden, attentions = [x], []
        for layer in self.layer:
            x, pattern = layer(x, output_attentions)
            hidden.append(x)
            attentions.append(pattern)
        return x, hidden, attentions


@dataclass
class EncoderOutput:
    last_hidden_state: torch.Tensor  # [B, T, D]
    hidden_states: tuple[torch.Tensor, ...] | None = None  # L + 1 of [B, T, D]
    attentions: tuple[torch.Tensor, ...] | None = None  # L of [B, H, T, T]


class BertModel(HookedModule):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.hook_embed = HookPoint()
        self.setup_hooks()
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def forward(
        self,
        input_ids: torch.Tensor,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> EncoderOutput:
        t = input_ids.shape[1]
        if t > self.config.max_position_embeddings:
            raise ValueError(
                f"inputs of {t} positions exceed the model's {self.config.max_position_embeddings}"
                " position embeddings"
            )
        x = self.hook_embed(self.embeddings(input_ids))
        x, hidden, attentions = self.encoder(x, output_attentions)
        return EncoderOutput(
            last_hidden_state=x,
            hidden_states=tuple(hidden) if output_hidden_states else None,
            attentions=tuple(attentions) if output_attentions else None,
        )


# ----------------------------------------------------------------------------------------------
# Caching and interventions, built on the hooks. Each returns (name, fn) pairs for `hooks`.


def caching_hooks(cache: dict, names: list[str]) -> list[tuple[str, HookFn]]:
    """Hooks that store a detached copy of each named activation in `cache`."""

    def store(x: torch.Tensor, hook: HookPoint) -> None:
        cache[hook.name] = x.detach()

    return [(name, store) for name in names]


def _index(values: list[int] | None) -> slice | list[int]:
    return slice(None) if values is None else list(values)


def patch_hooks(
    cache: dict, names: list[str], positions: list[int] | None = None
) -> list[tuple[str, HookFn]]:
    """Replace each named activation [B, T, ...] at `positions` (None = all) by its cached value."""

    def patch(x: torch.Tensor, hook: HookPoint) -> torch.Tensor:
        at_pos = torch.zeros(x.shape[1], dtype=torch.bool, device=x.device)
        at_pos[_index(positions)] = True
        chosen = at_pos.view(1, -1, *([1] * (x.dim() - 2)))
        return torch.where(chosen, cache[hook.name].to(x.dtype), x)

    return [(name, patch) for name in names]


def patch_z_hooks(
    cache: dict,
    layers: list[int],
    heads: list[int] | None = None,
    positions: list[int] | None = None,
) -> list[tuple[str, HookFn]]:
    """Replace z at `layers` × `heads` × `positions` (None = all) with the cached clean values.

    `cache` must hold `act_name("z", layer)` for each layer (e.g. from `caching_hooks`).
    """

    def patch(z: torch.Tensor, hook: HookPoint) -> torch.Tensor:
        _, t, h, _ = z.shape
        at_pos = torch.zeros(t, dtype=torch.bool, device=z.device)
        at_head = torch.zeros(h, dtype=torch.bool, device=z.device)
        at_pos[_index(positions)] = True
        at_head[_index(heads)] = True
        chosen = (at_pos[:, None] & at_head[None, :])[None, :, :, None]  # [1, T, H, 1]
        return torch.where(chosen, cache[hook.name].to(z.dtype), z)

    return [(act_name("z", layer), patch) for layer in layers]


ABLATIONS = ("mean", "uniform", "zero")


def ablate_head_hooks(heads: list[tuple[int, int]], method: str) -> list[tuple[str, HookFn]]:
    """Ablate (layer, head) pairs: `mean` replaces the head's pattern by its mean over the batch
    (the authors' "uniform ablation"), `uniform` by 1/T everywhere, `zero` zeroes its output z.
    """
    if method not in ABLATIONS:
        raise ValueError(f"unknown ablation '{method}' (valid: {', '.join(ABLATIONS)})")
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)

    def make(hs: list[int]) -> HookFn:
        def pattern_fn(p: torch.Tensor, hook: HookPoint) -> torch.Tensor:
            p = p.clone()
            if method == "mean":
                p[:, hs] = p[:, hs].mean(dim=0, keepdim=True)
            else:
                p[:, hs] = 1.0 / p.shape[-1]
            return p

        def zero_fn(z: torch.Tensor, hook: HookPoint) -> torch.Tensor:
            z = z.clone()
            z[:, :, hs] = 0.0
            return z

        return zero_fn if method == "zero" else pattern_fn

    kind = "z" if method == "zero" else "pattern"
    return [(act_name(kind, layer), make(hs)) for layer, hs in sorted(by_layer.items())]
