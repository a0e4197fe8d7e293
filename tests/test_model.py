import pytest
import torch

from model import MatrixBert, load_checkpoint
from modeling_bert import BertConfig
from utils import UserError


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
    model = MatrixBert(
        BertConfig(
            vocab_size=10,
            hidden_size=16,
            num_attention_heads=2,
            intermediate_size=8,
            num_hidden_layers=1,
        )
    )
    cfg = model.config.to_dict()
    cfg["hidden_size"] = 32
    path = tmp_path / "x.pt"
    torch.save({"model": model.state_dict(), "model_config": cfg, "step": 1}, path)
    with pytest.raises(UserError, match="do not fit"):
        load_checkpoint(path)


def test_inputs_longer_than_the_position_table_are_refused():
    model = MatrixBert(
        BertConfig(
            vocab_size=10,
            hidden_size=16,
            num_attention_heads=2,
            intermediate_size=8,
            num_hidden_layers=1,
            max_position_embeddings=8,
        )
    )
    with pytest.raises(UserError, match="position embeddings"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_checkpoint_path_errors_say_how_to_make_it(tmp_path):
    from model import checkpoint_path
    from utils import CkptSection

    with pytest.raises(UserError, match="python3 train.py --config configs/train.yaml"):
        checkpoint_path(CkptSection(run=str(tmp_path)))
    with pytest.raises(UserError, match="step_014000.pt not found.*14000 in train.save_steps"):
        checkpoint_path(CkptSection(run=str(tmp_path), step=14000))


def test_analysis_data_defaults_to_the_checkpoint(tiny_run):
    from model import analysis_data_config, load_from_section
    from utils import AnalysisData, CkptSection

    out_dir, _ = tiny_run
    model, ckpt = load_from_section(CkptSection(run=str(out_dir)))
    assert ckpt["step"] == 20
    cfg = analysis_data_config(ckpt, AnalysisData(), model)
    assert (cfg.m, cfg.n, cfg.rank) == (4, 4, 1)
    cfg = analysis_data_config(ckpt, AnalysisData(p_mask=0.5, rank=2), model)
    assert (cfg.p_mask, cfg.rank) == (0.5, 2)
    with pytest.raises(UserError, match="position embeddings"):
        analysis_data_config(ckpt, AnalysisData(m=9, n=9), model)
