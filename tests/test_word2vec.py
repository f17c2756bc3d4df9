import numpy as np
import pytest
import torch

from conftest import SMALL_GRU, run_cli, write_parquet
from imdbsent import data, runs, text, word2vec
from imdbsent.errors import UserError

ARGS = word2vec.Word2VecArgs(dim=8, epochs=30, window=1, negatives=3, subsample=1.0,
                             lr=0.1, batch_size=64, seed=7)


def _stream(seed: int = 0) -> np.ndarray:
    """Ids 2 and 3 always appear between 10 and 11; id 4 between 20 and 21."""
    rng = np.random.default_rng(seed)
    sentences = [[10, int(rng.choice([2, 3])), 11] if rng.random() < 0.66 else [20, 4, 21]
                 for _ in range(600)]
    return np.array([t for s in sentences for t in s])


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a, b, dim=0).item()


def test_words_of_the_same_contexts_get_similar_vectors():
    v = word2vec.train_vectors(_stream(), 30, ARGS)
    assert v.shape == (30, 8)
    assert _cos(v[2], v[3]) > 0.8
    assert _cos(v[2], v[3]) > _cos(v[2], v[4]) + 0.3


def test_same_seed_same_vectors_pad_is_zero_unit_scale():
    a = word2vec.train_vectors(_stream(), 30, ARGS)
    assert torch.equal(a, word2vec.train_vectors(_stream(), 30, ARGS))
    assert not torch.equal(a, word2vec.train_vectors(_stream(), 30,
                                                     word2vec.Word2VecArgs(**{**ARGS.__dict__, "seed": 8})))
    assert a[text.PAD_ID].abs().sum() == 0
    assert a[1:].std().item() == pytest.approx(1.0, rel=1e-4)


def test_prepare_learns_vectors_for_the_vocabulary_and_train_uses_them(prepared_dir, tmp_path):
    prepared = data.load_prepared(prepared_dir)
    assert prepared.manifest["vectors"] == data.VECTORS
    lines = (prepared_dir / data.VECTORS).read_text().splitlines()
    vocab = prepared.tokenizer.get_vocab()
    assert len(lines) == len(vocab) - 2  # every word but <pad> and <unk>
    word, *numbers = lines[0].split(" ")
    assert word in vocab and len(numbers) == 128

    cfg = tmp_path / "c.toml"
    cfg.write_text(SMALL_GRU.format(data=prepared_dir).replace("embedding_dim = 16",
                                                               "embedding_dim = 128")
                   .replace("epochs = 3", "epochs = 1")
                   .replace("lr = 0.01", "lr = 1e-12"))  # weights stay as loaded
    run = tmp_path / "run"
    assert run_cli(["train", "--config", str(cfg), "--run-dir", str(run),
                    "--vectors", "prepared"]) == 0
    emb = runs.load_checkpoint(run / "best.safetensors").weights["embedding.weight"]
    expected = torch.tensor([float(x) for x in numbers])
    assert torch.allclose(emb[vocab[word]], expected, atol=1e-5)


def test_without_vectors_prepared_says_how_to_train(source_dir, tmp_path, capsys):
    out = tmp_path / "prep"
    assert run_cli(["prepare", "--source", str(source_dir), "--out", str(out),
                    "--vectors-dim", "0"]) == 0
    assert not (out / data.VECTORS).exists()
    with pytest.raises(UserError, match="no word vectors of its own.*--vectors none"):
        data.load_prepared(out).vectors_file("prepared")
    cfg = tmp_path / "c.toml"
    cfg.write_text(SMALL_GRU.format(data=out).replace("epochs = 3", "epochs = 1"))
    assert run_cli(["train", "--config", str(cfg), "--run-dir", str(tmp_path / "r"),
                    "--vectors", "none"]) == 0
    assert runs.load_config(tmp_path / "r").train.vectors == ""
    assert run_cli(["prepare", "--source", str(source_dir), "--out", str(out),
                    "--vectors-dim", "-1"]) == 2  # a usage error
    assert "--vectors-dim must be 0 (none) or more" in capsys.readouterr().err


def test_prepare_warns_when_the_vectors_barely_learned(source_dir, tmp_path):
    """From 300 tokens of the tests' reviews (words drawn at random) word2vec learns nothing;
    from reviews of fixed phrases, all context, it learns."""
    said: list[str] = []
    manifest, _ = data.prepare(data.PrepareArgs(source=str(source_dir), vectors_dim=8,
                                                vectors_tokens=300), tmp_path / "few",
                               report=said.append)
    idle = [w for w in manifest["warnings"] if "the word vectors barely learned" in w]
    assert len(idle) == 1 and f"warning: {idle[0]}" in said
    assert "--vectors none" in idle[0]
    phrases = tmp_path / "phrases"
    phrases.mkdir()
    for split, n in (("train", 200), ("test", 20)):
        texts = [f"review {i} " + " ".join(["the cast is superb and the plot is fun"] * 10
                                            if i % 2 else
                                            ["a dull script with a weak and silly ending"] * 10)
                 for i in range(n)]
        write_parquet(phrases / f"{split}.parquet", texts, [i % 2 for i in range(n)])
    manifest, _ = data.prepare(data.PrepareArgs(source=str(phrases), vectors_dim=8),
                               tmp_path / "learned")
    assert not any("barely learned" in w for w in manifest["warnings"])
