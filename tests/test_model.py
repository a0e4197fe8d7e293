import pytest
import torch

from analysis import (
    AnalysisData,
    CkptSection,
    PrePostCkptSection,
    StepsCkptSection,
    analysis_data_config,
    checkpoint_path,
    load_from_section,
)
from data import DataConfig, MatrixSampler
from measures import LOSSES, batch_losses, evaluate, masked_mse, predict
from model import MatrixBert, load_checkpoint
from modeling_bert import BertConfig, ablate_head_hooks
from utils.config import UserError
from utils.floats import to_floats


def _small_model(**overrides):
    """A one-layer MatrixBert, seeded, that takes the default data's tokens."""
    torch.manual_seed(0)
    sizes = {"hidden_size": 16, "num_attention_heads": 2, "intermediate_size": 8}
    config = {"vocab_size": 2002, "num_hidden_layers": 1, "max_position_embeddings": 64}
    return MatrixBert(BertConfig(**{**sizes, **config, **overrides})).eval()


def _authors_checkpoint(tmp_path, heads=4):
    """A checkpoint shaped like the authors' code writes: HF BertModel under `_backbone.`,
    token-type embeddings present, `epoch`/`vocab_size` metadata, and an `optim` entry."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(
        vocab_size=60,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=heads,
        intermediate_size=40,
        max_position_embeddings=30,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    hf = transformers.BertModel(cfg, add_pooling_layer=False).eval()
    with torch.no_grad():
        hf.embeddings.token_type_embeddings.weight.normal_(0, 0.5)
    read_out = torch.nn.Linear(32, 1)
    sd = {f"_backbone.{k}": v for k, v in hf.state_dict().items()}
    sd.update({f"read_out.{k}": v for k, v in read_out.state_dict().items()})
    path = tmp_path / "authors.tar"
    torch.save({"epoch": 999, "model": sd, "optim": {}, "vocab_size": 60, "train_loss": 0.1}, path)
    return path, hf, read_out


def test_authors_format_loads_and_matches_their_model(tmp_path):
    path, hf, read_out = _authors_checkpoint(tmp_path)
    model, ckpt = load_checkpoint(path, num_attention_heads=4)
    assert ckpt["step"] == 1000
    c = model.config
    assert (c.vocab_size, c.hidden_size, c.num_hidden_layers, c.intermediate_size) == (
        60,
        32,
        2,
        40,
    )
    assert c.max_position_embeddings == 30
    ids = torch.randint(0, 60, (3, 25))
    with torch.no_grad():
        theirs = read_out(hf(input_ids=ids).last_hidden_state).squeeze(-1)
        ours = model(ids)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_authors_format_needs_the_head_count(tmp_path):
    path, _, _ = _authors_checkpoint(tmp_path)
    with pytest.raises(UserError, match="num_attention_heads"):
        load_checkpoint(path)


def test_weights_that_do_not_fit_are_a_clear_error(tmp_path):
    model = _small_model(vocab_size=10)
    cfg = model.config.to_dict()
    cfg["hidden_size"] = 32
    path = tmp_path / "x.pt"
    torch.save({"model": model.state_dict(), "model_config": cfg, "step": 1}, path)
    with pytest.raises(UserError, match="do not fit"):
        load_checkpoint(path)


def test_inputs_longer_than_the_position_table_are_refused():
    model = _small_model(vocab_size=10, max_position_embeddings=8)
    with pytest.raises(ValueError, match="position embeddings"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_checkpoint_path_errors_say_how_to_make_it(tmp_path, tiny_run):
    """Catches a hint that does not work: a missing run gets the train command that makes it; a
    run without the step lists the steps it holds (the old hint suggested training into a folder
    that already held a run, which train.py refuses)."""

    missing = tmp_path / "none"
    with pytest.raises(UserError, match="python3 train.py --config configs/train.yaml"):
        checkpoint_path(CkptSection(run=str(missing)))
    with pytest.raises(UserError, match="14000 in train.save_steps"):
        checkpoint_path(CkptSection(run=str(missing), step=14000))
    run, _ = tiny_run
    with pytest.raises(UserError, match=r"step_014000.pt not found.*holds steps 10, 20.*step=20"):
        checkpoint_path(CkptSection(run=str(run), step=14000))
    with pytest.raises(UserError, match="holds no checkpoints"):
        checkpoint_path(CkptSection(run=str(tmp_path)))


def test_analysis_data_defaults_to_the_checkpoint(tiny_run):

    out_dir, _ = tiny_run
    model, ckpt = load_from_section(CkptSection(run=str(out_dir)))
    assert ckpt["step"] == 20
    cfg = analysis_data_config(ckpt, AnalysisData(), model)
    assert (cfg.m, cfg.n, cfg.rank) == (4, 4, 1)
    cfg = analysis_data_config(ckpt, AnalysisData(p_mask=0.5, rank=2), model)
    assert (cfg.p_mask, cfg.rank) == (0.5, 2)
    with pytest.raises(UserError, match="position embeddings"):
        analysis_data_config(ckpt, AnalysisData(m=9, n=9), model)


def test_evaluate_is_masked_mse_over_every_entry_of_every_batch():
    model = _small_model()
    sampler = MatrixSampler(DataConfig(m=4, n=4, rank=1), seed=0)
    batches = sampler.sample_many(11, 4)  # 4 + 4 + 3: a plain mean of batch means would be off
    ids = torch.cat([b.input_ids for b in batches])
    with torch.no_grad():
        pred = model(ids)
    target = torch.cat([b.target for b in batches])
    observed = torch.cat([b.observed for b in batches])
    expected = to_floats(masked_mse(pred, target, observed))
    got = evaluate(model, batches)
    assert set(got) == set(expected) >= set(LOSSES)
    assert got == pytest.approx(expected, rel=1e-6)
    assert evaluate(model, batches, ablate_head_hooks([(0, 1)], "zero")) != pytest.approx(got)
    assert evaluate(model, batches) == got  # the hooks were removed
    # matrices of different sizes count entry by entry too
    mixed = batches[:1] + MatrixSampler(DataConfig(m=5, n=5, rank=1), seed=1).sample_many(2, 2)
    preds = [predict(model, b.input_ids, 3, "cpu") for b in mixed]
    flat = [torch.cat([x.flatten() for x in xs]) for xs in (preds, [b.target for b in mixed])]
    obs = torch.cat([b.observed.flatten() for b in mixed])
    expected = to_floats(masked_mse(flat[0], flat[1], obs))
    assert evaluate(model, mixed) == pytest.approx(expected, rel=1e-6)
    assert batch_losses(preds, mixed) == pytest.approx(expected, rel=1e-6)


def test_evaluate_gives_none_where_there_is_nothing_to_average():
    model = _small_model()
    batches = MatrixSampler(DataConfig(m=4, n=4, rank=1, p_mask=0.0), seed=0).sample_many(4, 4)
    losses = evaluate(model, batches)
    assert losses["loss_mask"] is None and losses["loss"] == pytest.approx(losses["loss_obs"])


def test_predict_in_chunks_equals_one_pass():
    model = _small_model()
    ids = MatrixSampler(DataConfig(m=4, n=4, rank=1), seed=0).sample(10).input_ids
    with torch.no_grad():
        whole = model(ids)
    chunked = predict(model, ids, 3, "cpu")
    assert chunked.shape == (10, 16) and chunked.dtype == torch.float32
    torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=1e-6)


def test_sections_for_several_checkpoints():
    many = StepsCkptSection(run="r", steps=[10, 20], num_attention_heads=4).sections()
    assert many == [CkptSection("r", 10, None, 4), CkptSection("r", 20, None, 4)]
    assert StepsCkptSection(run="r").sections() == [CkptSection("r", None, None, None)]
    files = StepsCkptSection(steps=[10], paths=["a.pt", "b.pt"]).sections()
    assert [(s.path, s.step) for s in files] == [("a.pt", None), ("b.pt", None)]
    pair = PrePostCkptSection(run="r", pre_step=10, post_step=20, post_path="p.pt").sections()
    assert pair == {"pre": CkptSection("r", 10, None, None), "post": CkptSection("r", 20, "p.pt")}


def test_masked_mse_on_a_worked_example():
    """Catches any of the four measured on the wrong entries (e.g. mask_value at observed ones)."""
    pred = torch.tensor([[0.5, -1.0, 0.0, 2.0]])
    target = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    observed = torch.tensor([[True, False, True, False]])
    # squared errors 0.25, 1, 1, 1; entries 0 and 2 observed, 1 and 3 hidden
    got = to_floats(masked_mse(pred, target, observed))
    assert got == pytest.approx(
        {
            "loss": (0.25 + 1 + 1 + 1) / 4,  # 0.8125
            "loss_obs": (0.25 + 1) / 2,  # 0.625
            "loss_mask": (1 + 1) / 2,  # 1.0
            "mask_value": (1.0 + 2.0) / 2,  # |pred| at hidden entries: 1.5 (observed ones: 0.25)
        }
    )
