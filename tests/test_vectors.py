import pytest
import torch

from imdbsent import models, text, vectors
from imdbsent.config import ModelConfig
from imdbsent.errors import UserError


@pytest.fixture()
def tokenizer():
    return text.fit_tokenizer(["good bad film plot"], max_vocab=10)


def _model(tok, dim=3):
    torch.manual_seed(0)
    return models.build(ModelConfig(name="gru", embedding_dim=dim, hidden_dim=2),
                        tok.get_vocab_size())


@pytest.mark.parametrize("header", ["", "3 3\n"], ids=["glove", "word2vec"])
def test_known_words_take_the_files_vectors_others_stay_random_pad_is_zero(tmp_path, tokenizer,
                                                                           header):
    path = tmp_path / "vectors.txt"
    path.write_text(header + "good 1 2 3\nbad -1 -2 -3\nunrelated 9 9 9\n")
    model = _model(tokenizer)
    before = model.embedding.weight.detach().clone()
    assert vectors.load_into(model, tokenizer, path) == 2
    vocab = tokenizer.get_vocab()
    w = model.embedding.weight.detach()
    assert w[vocab["good"]].tolist() == [1.0, 2.0, 3.0]
    assert w[vocab["bad"]].tolist() == [-1.0, -2.0, -3.0]
    assert torch.equal(w[vocab["film"]], before[vocab["film"]])
    assert w[text.PAD_ID].tolist() == [0.0, 0.0, 0.0]


def test_wrong_dimension_names_the_line(tmp_path, tokenizer):
    path = tmp_path / "v.txt"
    path.write_text("good 1 2\n")
    with pytest.raises(UserError, match=r"v\.txt, line 1: 2 numbers, but the model's embedding has 3"):
        vectors.load_into(_model(tokenizer), tokenizer, path)


def test_file_without_any_known_word(tmp_path, tokenizer):
    path = tmp_path / "v.txt"
    path.write_text("zebra 1 2 3\n")
    with pytest.raises(UserError, match="no word of the vocabulary"):
        vectors.load_into(_model(tokenizer), tokenizer, path)


def test_missing_file(tmp_path, tokenizer):
    with pytest.raises(UserError, match="cannot read vectors"):
        vectors.load_into(_model(tokenizer), tokenizer, tmp_path / "none.txt")


def test_train_with_vectors_from_the_cli(prepared_dir, tmp_path):
    from conftest import SMALL_GRU, run_cli
    from imdbsent import data, runs
    vocab = data.load_prepared(prepared_dir).tokenizer.get_vocab()
    path = tmp_path / "v.txt"
    path.write_text("".join(f"{w} " + " ".join(["3.0"] * 16) + "\n" for w in ("great", "awful")))
    cfg = tmp_path / "c.toml"
    cfg.write_text(SMALL_GRU.format(data=prepared_dir).replace("epochs = 3", "epochs = 1"))
    rows = {}
    for name, flags in (("with", ["--vectors", str(path)]), ("without", [])):
        run = tmp_path / name
        assert run_cli(["train", "--config", str(cfg), "--run-dir", str(run), *flags]) == 0
        emb = runs.load_checkpoint(run / "last.safetensors").weights["embedding.weight"]
        rows[name] = emb[[vocab["great"], vocab["awful"]]]
    assert runs.load_config(tmp_path / "with").train.vectors == str(path)
    # one epoch of Adam (18 steps of lr 0.01) moves a weight by at most about 0.2: the rows
    # still hold the file's 3.0, and without the file they never came near it
    assert (rows["with"] - 3.0).abs().max() < 0.5
    assert (rows["without"] - 3.0).abs().min() > 0.5


def test_models_without_a_word_embedding_refuse_vectors(tmp_path, tokenizer):
    path = tmp_path / "v.txt"
    path.write_text("good 1\n")
    model = models.build(ModelConfig(name="nblr", ngram_buckets=10), tokenizer.get_vocab_size())
    with pytest.raises(UserError, match="NBLR has no word embedding"):
        vectors.load_into(model, tokenizer, path)
