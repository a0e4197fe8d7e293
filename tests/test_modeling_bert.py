import pytest
import torch

import modeling_bert
from analysis import check_heads, resolve_indices
from data import DataConfig, MatrixSampler
from model import MatrixBert
from modeling_bert import (
    BertConfig,
    BertConfigError,
    BertModel,
    ablate_head_hooks,
    act_name,
    caching_hooks,
    patch_hooks,
    patch_z_hooks,
)
from utils.config import UserError

CFG = BertConfig(
    vocab_size=50,
    hidden_size=32,
    num_hidden_layers=3,
    num_attention_heads=4,
    intermediate_size=48,
    max_position_embeddings=40,
)


def _ids(b=3, t=16, vocab=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (b, t), generator=g)
    ids[:, ::3] = 0  # some MASK tokens
    return ids


def _trained_like(cfg=CFG, seed=0):
    """A model whose weights are random everywhere (not just the init), so tests see all paths."""
    torch.manual_seed(seed)
    model = MatrixBert(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name:
                p.add_(0.1 * torch.randn_like(p))
            elif "bias" in name:
                p.normal_(0, 0.05)
    return model.eval()


def test_init_matches_hf_conventions():
    model = BertModel(CFG)
    assert torch.all(model.embeddings.word_embeddings.weight[0] == 0)
    w = model.encoder.layer[0].attention.self.query.weight
    assert abs(w.std().item() - 0.02) < 0.003
    assert torch.all(model.encoder.layer[0].intermediate.dense.bias == 0)
    assert not any("token_type" in k for k in model.state_dict())


def test_equals_transformers_bert():
    transformers = pytest.importorskip("transformers")
    ours = _trained_like().backbone
    hf_cfg = transformers.BertConfig(
        vocab_size=CFG.vocab_size,
        hidden_size=CFG.hidden_size,
        num_hidden_layers=CFG.num_hidden_layers,
        num_attention_heads=CFG.num_attention_heads,
        intermediate_size=CFG.intermediate_size,
        max_position_embeddings=CFG.max_position_embeddings,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        type_vocab_size=1,
        attn_implementation="eager",
    )
    hf = transformers.BertModel(hf_cfg, add_pooling_layer=False).eval()
    missing, unexpected = hf.load_state_dict(ours.state_dict(), strict=False)
    assert unexpected == []
    assert [k for k in missing if "token_type" not in k] == []
    with torch.no_grad():
        hf.embeddings.token_type_embeddings.weight.zero_()
    ids = _ids()
    with torch.no_grad():
        a = ours(ids, output_attentions=True, output_hidden_states=True)
        b = hf(input_ids=ids, output_attentions=True, output_hidden_states=True)
    assert len(a.hidden_states) == len(b.hidden_states) == CFG.num_hidden_layers + 1
    for x, y in zip(a.hidden_states, b.hidden_states):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)
    for x, y in zip(a.attentions, b.attentions):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.last_hidden_state, b.last_hidden_state, atol=1e-5, rtol=1e-5)


def test_outputs_only_when_asked():
    out = BertModel(CFG)(_ids())
    assert out.hidden_states is None and out.attentions is None


def test_fast_and_hooked_paths_agree(monkeypatch):
    """The SDPA path (GPUs; CPUs only when asked) and the explicit one compute the same
    function: catches a scale, transpose or head-split slip in either."""
    monkeypatch.setattr(modeling_bert, "SDPA_ON_CPU", True)
    model = _trained_like()
    ids = _ids()
    with torch.no_grad():
        fast = model(ids)
        with model.hooks([(act_name("pattern", 0), lambda p, h: None)]):
            hooked = model(ids)
    torch.testing.assert_close(fast, hooked, atol=1e-5, rtol=1e-5)


def test_bf16_autocast_on_cpu_trains_close_to_fp32():
    """bf16 on a CPU takes the explicit attention path (SDPA's bf16 kernel is slow there):
    outputs and gradients stay within bf16 rounding of the fp32 ones."""
    model = _trained_like().train()
    ids = _ids()

    def run(bf16):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(ids)
        out.float().square().mean().backward()
        return out.float().detach(), model.backbone.embeddings.word_embeddings.weight.grad.clone()

    out32, grad32 = run(False)
    out16, grad16 = run(True)
    assert (out16 - out32).abs().max() < 0.05 * out32.abs().max()
    assert (grad16 - grad32).norm() < 0.05 * grad32.norm()


def test_bf16_pattern_is_the_rounded_fp32_softmax_of_its_scores():
    """On the explicit path the softmax runs in fp32 and is rounded back: the pattern keeps the
    scores' dtype (as HF's eager attention does) and is a distribution over keys."""
    model = _trained_like().eval()
    seen = {}

    def keep(name):
        def fn(x, hook):
            seen[name] = x.detach()

        return fn

    names = [act_name("attn_scores", 1), act_name("pattern", 1)]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        with model.hooks([(n, keep(n)) for n in names]):
            model(_ids())
    scores, pattern = (seen[n] for n in names)
    assert scores.dtype == pattern.dtype == torch.bfloat16
    expected = scores.float().softmax(dim=-1).to(torch.bfloat16)
    torch.testing.assert_close(pattern, expected, atol=0, rtol=0)
    torch.testing.assert_close(
        pattern.float().sum(-1), torch.ones(pattern.shape[:-1]), atol=2e-2, rtol=0
    )


def test_noop_hooks_change_nothing_and_are_removed():
    model = _trained_like()
    ids = _ids()
    names = list(model.backbone.hook_points)
    assert act_name("z", 2) in names and "hook_embed" in names
    with torch.no_grad():
        ref = model(ids)
        with model.hooks([(n, lambda x, h: x) for n in names]):
            out = model(ids)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)
    assert all(not hp.fns for hp in model.backbone.hook_points.values())


def test_hooks_removed_after_an_exception():
    model = _trained_like()

    def boom(x, hook):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        with model.hooks([(act_name("z", 0), boom)]):
            model(_ids())
    assert all(not hp.fns for hp in model.backbone.hook_points.values())


def test_unknown_hook_name_is_an_error():
    with pytest.raises(ValueError, match="no hook point"):
        with _trained_like().hooks([("nope", lambda x, h: x)]):
            pass


def test_cache_shapes():
    model = _trained_like()
    ids = _ids(b=2, t=16)
    _, cache = model.run_with_cache(ids)
    assert cache[act_name("z", 1)].shape == (2, 16, 4, 8)
    assert cache[act_name("pattern", 1)].shape == (2, 4, 16, 16)
    assert cache[act_name("resid_post", 2)].shape == (2, 16, 32)
    assert cache[act_name("mlp_post", 0)].shape == (2, 16, 48)
    torch.testing.assert_close(cache[act_name("pattern", 0)].sum(-1), torch.ones(2, 4, 16))


def _clean_corrupted():
    cfg = DataConfig(m=4, n=4, rank=1)
    clean, corr = MatrixSampler(cfg, seed=1).sample_with_corrupted(4)
    model = _trained_like(BertConfig(**{**CFG.to_dict(), "vocab_size": 2002}))
    return model, clean.input_ids, corr.input_ids


def test_patching_with_own_cache_changes_nothing():
    model, clean, _ = _clean_corrupted()
    layers = range(CFG.num_hidden_layers)
    ref, cache = model.run_with_cache(clean, [act_name("z", i) for i in layers])
    with torch.no_grad(), model.hooks(patch_z_hooks(cache, list(layers))):
        out = model(clean)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)


def test_patching_every_layer_z_fixes_attention_but_not_the_residual():
    """Patching z at every layer makes every attention output the clean one only where the
    residual stream agrees; the corrupted tokens still flow through the residual stream, so the
    output is not the clean one. Patching the embedding output as well restores it exactly."""
    model, clean, corr = _clean_corrupted()
    layers = list(range(CFG.num_hidden_layers))
    names = [act_name("z", i) for i in layers]
    ref, cache = model.run_with_cache(clean, names + [act_name("embed")])
    with torch.no_grad():
        corrupted = model(corr)
        with model.hooks(patch_z_hooks(cache, layers)):
            z_only = model(corr)
        with model.hooks(patch_hooks(cache, [act_name("embed")]) + patch_z_hooks(cache, layers)):
            both = model(corr)
    assert (corrupted - ref).abs().max() > 1e-3
    assert (z_only - ref).abs().max() > 1e-4
    torch.testing.assert_close(both, ref, atol=1e-6, rtol=0)


def test_patching_the_last_residual_restores_clean_output():
    model, clean, corr = _clean_corrupted()
    last = act_name("resid_post", CFG.num_hidden_layers - 1)
    ref, cache = model.run_with_cache(clean, [last])
    with torch.no_grad(), model.hooks(patch_hooks(cache, [last])):
        out = model(corr)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)
    with torch.no_grad(), model.hooks(patch_hooks(cache, [last], positions=[0])):
        part = model(corr)
    torch.testing.assert_close(part[:, 0], ref[:, 0], atol=1e-6, rtol=0)
    assert (part[:, 1:] - ref[:, 1:]).abs().max() > 1e-4


def test_patching_some_heads_and_positions_only_touches_those():
    model, clean, corr = _clean_corrupted()
    _, cache = model.run_with_cache(clean, [act_name("z", 0)])
    seen = {}

    def grab(x, hook):
        seen["z"] = x.clone()

    hooks = patch_z_hooks(cache, [0], heads=[1], positions=[2, 5]) + [(act_name("z", 0), grab)]
    _, corr_cache = model.run_with_cache(corr, [act_name("z", 0)])
    with torch.no_grad(), model.hooks(hooks):
        model(corr)
    z, clean_z, corr_z = seen["z"], cache[act_name("z", 0)], corr_cache[act_name("z", 0)]
    assert torch.equal(z[:, [2, 5], 1], clean_z[:, [2, 5], 1])
    keep = torch.ones_like(z, dtype=torch.bool)
    keep[:, [2, 5], 1] = False
    assert torch.equal(z[keep], corr_z[keep])


@pytest.mark.parametrize("method", ["mean", "uniform", "zero"])
def test_ablations(method):
    model = _trained_like()
    ids = _ids(b=4)
    seen = {}

    def grab_pattern(p, hook):
        seen["p"] = p.clone()

    def grab_z(z, hook):
        seen["z"] = z.clone()

    hooks = ablate_head_hooks([(1, 2)], method) + [
        (act_name("pattern", 1), grab_pattern),
        (act_name("z", 1), grab_z),
    ]
    with torch.no_grad():
        ref = model(ids)
        with model.hooks(hooks):
            out = model(ids)
    assert (out - ref).abs().max() > 1e-6
    if method == "zero":
        assert torch.all(seen["z"][:, :, 2] == 0)
    else:
        p = seen["p"][:, 2]
        expected = p[0].expand_as(p) if method == "mean" else torch.full_like(p, 1 / 16)
        torch.testing.assert_close(p, expected)
        torch.testing.assert_close(seen["p"][:, 2].sum(-1), torch.ones(4, 16))


def test_ablating_nothing_changes_nothing():
    model = _trained_like()
    ids = _ids()
    with torch.no_grad():
        ref = model(ids)
        with model.hooks(ablate_head_hooks([], "mean")):
            out = model(ids)
    assert torch.equal(out, ref)


def test_caching_hooks_store_detached_copies():
    model = _trained_like()
    cache = {}
    with model.hooks(caching_hooks(cache, [act_name("embed")])):
        model(_ids())
    assert not cache["hook_embed"].requires_grad


def test_index_checks_name_the_config_key():
    assert check_heads([[2, 3], [0, 0]], CFG, "x.heads") == [(2, 3), (0, 0)]
    assert check_heads([], CFG, "x.heads") == []
    for pairs, match in (
        ([[3, 0]], r"'x.heads': layer 3 outside 0..2"),
        ([[0, 4]], r"'x.heads': head 4 outside 0..3"),
        ([[-1, 0]], r"'x.heads': layer -1"),  # no counting from the end for pairs
        ([[0]], r"'x.heads': expected \[layer, head\], got \[0\]"),
    ):
        with pytest.raises(UserError, match=match):
            check_heads(pairs, CFG, "x.heads")
    assert resolve_indices([-1, 0, 2, -3], 3, "x.layers") == [2, 0, 2, 0]
    assert resolve_indices(None, 3, "x.layers") is None
    for bad in (3, -4):
        with pytest.raises(UserError, match=f"'x.layers' has {bad}, outside 0..2"):
            resolve_indices([bad], 3, "x.layers")


def test_the_encoder_needs_torch_alone():
    """Catches modeling_bert.py importing project modules again (it is the file people copy
    into other projects): only the standard library and torch."""
    import ast
    import sys

    from conftest import ROOT

    tree = ast.parse((ROOT / "modeling_bert.py").read_text())
    imported = {
        (node.module if isinstance(node, ast.ImportFrom) else alias.name).split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import) or (isinstance(node, ast.ImportFrom) and node.level == 0)
        for alias in node.names
    }
    assert imported - {"__future__", "torch"} <= set(sys.stdlib_module_names), imported


@pytest.mark.parametrize(
    "key, value",
    [
        ("intermediate_size", 0),
        ("layer_norm_eps", -1e-12),
        ("num_attention_heads", 0),
        ("max_position_embeddings", 0),
        ("hidden_dropout_prob", 1.0),
    ],
)
def test_values_the_encoder_cannot_take_are_refused(key, value):
    """Catches a config that builds a broken model (an empty MLP, a negative LayerNorm eps)."""
    with pytest.raises(BertConfigError, match=key):
        BertConfig(**{key: value})


def test_intermediate_size_null_is_four_times_the_width():
    """BERT's ratio, so a width sweep needs one option."""
    assert (
        BertConfig(hidden_size=64, num_attention_heads=4, intermediate_size=None).intermediate_size
        == 256
    )


def test_a_plain_torch_forward_hook_on_the_pattern_fires_and_can_ablate(monkeypatch):
    """Catches the fast (SDPA) path taken when only a torch hook (`register_forward_hook`, as
    nnsight and most interpretability code register) sits on hook_pattern or hook_attn_scores:
    the hook would never fire. It must see every head's pattern (rows summing to 1), leave the
    output as the fast path computes it, and be able to replace the pattern."""
    monkeypatch.setattr(modeling_bert, "SDPA_ON_CPU", True)  # the fast path, as on a GPU
    model = _trained_like().eval()
    ids = _ids()
    fast = model(ids)
    attention = model.backbone.encoder.layer[1].attention.self
    seen = []
    handle = attention.hook_pattern.register_forward_hook(lambda m, args, out: seen.append(out))
    try:
        hooked = model(ids)
    finally:
        handle.remove()
    assert len(seen) == 1 and seen[0].shape == (3, CFG.num_attention_heads, 16, 16)
    torch.testing.assert_close(seen[0].sum(-1), torch.ones(3, CFG.num_attention_heads, 16))
    torch.testing.assert_close(hooked, fast, atol=1e-5, rtol=1e-5)
    uniform = attention.hook_attn_scores.register_forward_hook(lambda m, a, out: out * 0)
    try:
        ablated = model(ids)
    finally:
        uniform.remove()
    with model.hooks(ablate_head_hooks([(1, h) for h in range(4)], "uniform")):
        reference = model(ids)
    torch.testing.assert_close(ablated, reference, atol=1e-5, rtol=1e-5)
    assert not attention.hook_pattern.active  # removed: the fast path again


def test_a_cpu_takes_the_explicit_attention_path(monkeypatch):
    """On a CPU the explicit path is the faster one (modeling_bert.SDPA_ON_CPU): catches SDPA
    taken there again, which slowed the CPU miniature's step."""

    def refuse(*args, **kwargs):
        raise AssertionError("SDPA called on a CPU")

    monkeypatch.setattr(modeling_bert.F, "scaled_dot_product_attention", refuse)
    model = _trained_like().train()
    model(_ids()).square().mean().backward()
