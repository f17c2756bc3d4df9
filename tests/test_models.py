import pytest
import torch

from imdbsent import models
from imdbsent.config import ModelConfig

VOCAB = 50


def _batch():
    text = torch.tensor([[5, 6, 7, 8, 9], [3, 4, 0, 0, 0], [2, 0, 0, 0, 0]])
    return text, torch.tensor([5, 2, 1])


EVERY_MODEL = [
    ModelConfig(name="rnn", embedding_dim=8, hidden_dim=6),
    ModelConfig(name="lstm", embedding_dim=8, hidden_dim=6, num_layers=2, bidirectional=True,
                dropout=0.2),
    ModelConfig(name="gru", embedding_dim=8, hidden_dim=6, pooling="max"),
    ModelConfig(name="gru", embedding_dim=8, hidden_dim=6, bidirectional=True, pooling="mean"),
    ModelConfig(name="lstm", embedding_dim=8, hidden_dim=6, bidirectional=True, pooling="max",
                region_size=3, region_dim=4),
    ModelConfig(name="cnn", embedding_dim=8, num_filters=4, filter_sizes=[2, 3, 7]),
    ModelConfig(name="rcnn", hidden_dim=6, dropout=0.5, region_size=3, region_dim=4),
    ModelConfig(name="nbow", embedding_dim=8, ngram_buckets=100),
    ModelConfig(name="nblr", ngram_buckets=100, ngrams=3),
]


def _separable():
    """Eight reviews of different lengths whose label is which of two words they contain."""
    rows = [[10, 3, 4], [20, 5, 6, 7, 8], [3, 10], [5, 20, 6, 7], [4, 4, 4, 10, 9, 8],
            [9, 20, 8], [10], [20, 3, 3, 3, 3, 3]]
    width = max(map(len, rows))
    text = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    label = torch.tensor([1.0 if 10 in r else 0.0 for r in rows])
    return text, torch.tensor([len(r) for r in rows]), label


@pytest.mark.parametrize("cfg", EVERY_MODEL, ids=lambda c: f"{c.name}-{c.pooling}")
def test_every_model_gives_one_logit_per_review_and_learns(cfg):
    from imdbsent.data import Batch
    torch.manual_seed(0)
    model = models.build(cfg, VOCAB)
    text, lengths, label = _separable()
    if cfg.name == "nblr":
        model.fit_prior([Batch(text, lengths, label)])
    # NB-LR divides its score by R_ADJ = 10: its weights need larger steps to move its logit
    optimizer = torch.optim.Adam(model.parameters(), lr=0.5 if cfg.name == "nblr" else 0.05)
    loss = torch.nn.functional.binary_cross_entropy_with_logits

    def step() -> float:
        optimizer.zero_grad()
        value = loss(model(text, lengths), label)
        value.backward()
        optimizer.step()
        return value.item()

    first = step()
    for _ in range(40):
        last = step()
    model.eval()
    with torch.no_grad():
        out = model(text, lengths)
    assert out.shape == (8,) and torch.isfinite(out).all()
    assert last < 0.1 * first
    assert ((out > 0).float() == label).all()


def test_tutorial_rnn_has_the_tutorials_parameter_count():
    from imdbsent.engine import count_parameters
    model = models.build(ModelConfig(name="rnn", embedding_dim=100, hidden_dim=256), 25_002)
    assert count_parameters(model) == 2_592_105
    assert isinstance(model.rnn, torch.nn.RNN) and model.fc.out_features == 1


@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
@pytest.mark.parametrize("name, pooling", [("lstm", "last"), ("gru", "last"), ("gru", "max"),
                                           ("lstm", "mean")])
def test_padding_is_invisible_and_packed_equals_dense(name, pooling, packed):
    torch.manual_seed(0)
    cfg = ModelConfig(name=name, embedding_dim=8, hidden_dim=6, num_layers=2, bidirectional=True,
                      pooling=pooling, packed=packed)
    model = models.build(cfg, VOCAB).eval()
    alone = model(torch.tensor([[3, 4, 5]]), torch.tensor([3]))
    text = torch.tensor([[3, 4, 5, 0, 0, 0], [7, 8, 9, 10, 11, 12]])
    padded = model(text, torch.tensor([3, 6]))
    torch.testing.assert_close(padded[0], alone[0])
    other = models.build(ModelConfig(**{**cfg.__dict__, "packed": not packed}), VOCAB).eval()
    other.load_state_dict(model.state_dict())
    torch.testing.assert_close(other(text, torch.tensor([3, 6])), padded)


def test_last_pooling_is_the_final_state_of_each_direction():
    torch.manual_seed(0)
    cfg = ModelConfig(name="gru", embedding_dim=4, hidden_dim=3, bidirectional=True)
    model = models.build(cfg, VOCAB).eval()
    reference = torch.nn.GRU(4, 3, batch_first=True, bidirectional=True)
    fwd, bwd = model.layers[0]
    with torch.no_grad():
        for name, value in fwd.named_parameters():
            getattr(reference, name).copy_(value)
            getattr(reference, name + "_reverse").copy_(dict(bwd.named_parameters())[name])
        text = torch.tensor([[3, 4, 5, 6]])
        _, h = reference(model.embedding(text))
        expected = model.fc(torch.cat([h[0], h[1]], dim=1)).squeeze(1)
        torch.testing.assert_close(model(text, torch.tensor([4])), expected)


def test_reversal_index_reverses_within_length_only():
    idx = models.reversal_index(torch.tensor([3, 1, 4]), 4)
    assert idx.tolist() == [[2, 1, 0, 3], [0, 1, 2, 3], [3, 2, 1, 0]]


def _invariance_models():
    recurrent = [ModelConfig(name=name, embedding_dim=8, hidden_dim=6, num_layers=layers,
                             bidirectional=bi, pooling=pooling, packed=packed)
                 for name in ("lstm", "gru") for pooling in ("last", "max", "mean")
                 for packed in (False, True) for bi, layers in ((False, 1), (True, 2))]
    return recurrent + [
        ModelConfig(name="cnn", embedding_dim=8, num_filters=4, filter_sizes=[3, 4, 5]),
        ModelConfig(name="cnn", embedding_dim=8, num_filters=4, filter_sizes=[2, 7]),
        ModelConfig(name="nbow", embedding_dim=8, ngram_buckets=100, ngrams=3),
        ModelConfig(name="nblr", ngram_buckets=100, ngrams=3),
        ModelConfig(name="ensemble"),
        ModelConfig(name="lstm", embedding_dim=8, hidden_dim=6, bidirectional=True,
                    pooling="max", region_size=5, region_dim=4),
        ModelConfig(name="rcnn", hidden_dim=6, region_size=5, region_dim=4),
    ]


def _build_for_invariance(cfg):
    torch.manual_seed(0)
    if cfg.name == "ensemble":  # members reading all tokens and only their first 6
        cnn = ModelConfig(name="cnn", embedding_dim=8, num_filters=4, filter_sizes=[2, 5])
        lstm = ModelConfig(name="lstm", embedding_dim=8, hidden_dim=6, bidirectional=True,
                           pooling="max")
        return models.Ensemble([models.build(cnn, VOCAB), models.build(lstm, VOCAB)], [0, 6],
                               ["cnn", "lstm"])
    model = models.build(cfg, VOCAB)
    if cfg.name == "nblr":  # a prior of its own for every n-gram, so that each one counts
        model.ratio.copy_(torch.randn(model.ratio.shape))
        model.ratio[0] = 0.0
    if cfg.region_size:  # region embeddings that count (a learned table, its row 0 zero)
        model.regions.table.copy_(torch.randn(model.regions.table.shape))
        model.regions.table[0] = 0.0
        torch.nn.init.normal_(model.regions.project.weight)
    return model


@pytest.mark.parametrize("cfg", _invariance_models(), ids=lambda c: "-".join(
    str(v) for v in (c.name, c.pooling if c.name in ("lstm", "gru") else "",
                     "packed" if c.packed else "", f"{c.num_layers}x{2 if c.bidirectional else 1}",
                     f"regions{c.region_size}" if c.region_size else "",
                     c.filter_sizes if c.name == "cnn" else "") if v))
def test_a_reviews_logit_does_not_depend_on_the_rest_of_its_batch(cfg):
    """Padding is masked: the same review scores the same alone and beside longer ones (the
    tutorial's RNN reads padding on purpose and is left out)."""
    model = _build_for_invariance(cfg).eval()
    gen = torch.Generator().manual_seed(1)
    reviews = [torch.randint(2, VOCAB, (n,), generator=gen).tolist() for n in (1, 3, 6, 9, 14)]
    long = torch.randint(2, VOCAB, (40,), generator=gen).tolist()

    def score(batch):
        width = max(map(len, batch))
        text = torch.tensor([r + [0] * (width - len(r)) for r in batch])
        with torch.no_grad():
            return model(text, torch.tensor([len(r) for r in batch]))

    alone = torch.cat([score([r]) for r in reviews])
    beside_long = torch.cat([score([r, long])[:1] for r in reviews])
    mixed = score([long, *reviews[::-1]])[1:].flip(0)
    torch.testing.assert_close(beside_long, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(mixed, alone, atol=1e-5, rtol=0)


def test_cnn_pads_inputs_shorter_than_its_widest_filter():
    model = models.build(ModelConfig(name="cnn", embedding_dim=4, num_filters=2,
                                     filter_sizes=[3, 5]), VOCAB)
    assert model(torch.tensor([[4]]), torch.tensor([1])).shape == (1,)


def test_nbow_hashes_bigrams_beyond_the_vocabulary_and_ignores_padding():
    model = models.NBOW(VOCAB, ModelConfig(name="nbow", embedding_dim=4, ngram_buckets=10))
    ids = models.ngram_ids(torch.tensor([[5, 6, 7, 0]]), VOCAB, 10, 2)
    words, bigrams = ids[0, :4].tolist(), ids[0, 4:].tolist()
    assert words == [5, 6, 7, 0]
    assert all(VOCAB <= b < VOCAB + 10 for b in bigrams[:2]) and bigrams[2] == 0
    assert model.embedding.weight.shape[0] == VOCAB + 10
    model.eval()
    torch.testing.assert_close(model(torch.tensor([[5, 6, 7, 0, 0]]), None),
                               model(torch.tensor([[5, 6, 7]]), None))


def test_nbow_prior_tokens_pull_a_short_text_to_the_bias_and_barely_move_a_long_one():
    torch.manual_seed(0)
    plain = models.NBOW(VOCAB, ModelConfig(name="nbow", embedding_dim=4, ngram_buckets=10))
    prior = models.NBOW(VOCAB, ModelConfig(name="nbow", embedding_dim=4, ngram_buckets=10,
                                           prior_tokens=8.0))
    prior.load_state_dict(plain.state_dict())
    plain.eval(), prior.eval()
    short, long = torch.tensor([[5]]), torch.randint(2, VOCAB, (1, 400))
    bias = plain.fc.bias.item()
    ids = models.ngram_ids(short, VOCAB, 10, 2)
    mean = (plain.embedding.weight[ids[0]] @ plain.fc.weight[0]).mean().item()
    with torch.no_grad():
        assert plain(short, None).item() == pytest.approx(bias + mean, abs=1e-6)  # the mean
        assert prior(short, None).item() == pytest.approx(bias + mean / 9, abs=1e-6)  # 1 of 9
        long_plain, long_prior = plain(long, None).item(), prior(long, None).item()
    assert long_prior - bias == pytest.approx((long_plain - bias) * 799 / 807, rel=1e-4)


def test_trigrams_hash_three_words_and_skip_padding():
    ids = models.ngram_ids(torch.tensor([[5, 6, 7, 8, 0]]), VOCAB, 1000, 3)[0].tolist()
    words, bigrams, trigrams = ids[:5], ids[5:9], ids[9:]
    assert words == [5, 6, 7, 8, 0]
    assert len(trigrams) == 3 and trigrams[2] == 0 and trigrams[1] != 0
    assert bigrams[3] == 0 and len(set(bigrams[:3] + trigrams[:2])) == 5
    same = models.ngram_ids(torch.tensor([[1, 5, 6, 7]]), VOCAB, 1000, 3)[0].tolist()
    assert trigrams[0] in same  # the same three words hash alike wherever they stand


def test_nblr_prior_favours_words_of_the_positive_class():
    from imdbsent.data import Batch
    model = models.NBLR(VOCAB, ModelConfig(name="nblr", ngram_buckets=0, ngrams=1))
    text = torch.tensor([[5, 5, 6], [7, 6, 0]])
    batch = Batch(text, torch.tensor([3, 2]), torch.tensor([1.0, 0.0]))
    model.fit_prior([batch])
    assert model.ratio[5] > 0 > model.ratio[7] and model.ratio[6] == pytest.approx(0.0, abs=1e-6)
    assert model.features(torch.tensor([[5, 5, 6]])).tolist() == [[5, 0, 6]]  # binarized


def test_ngram_hash_spreads_bigrams_over_the_buckets():
    a, b = torch.meshgrid(torch.arange(2, 302), torch.arange(2, 302), indexing="ij")
    text = torch.stack([a.flatten(), b.flatten()], dim=1)  # 90,000 distinct bigrams
    bigrams = models.ngram_ids(text, VOCAB, 4_000_000, 2)[:, 2]
    # uniform hashing would leave about 1% of them sharing a bucket
    assert bigrams.unique().numel() > 0.98 * len(bigrams)


class _Fixed(torch.nn.Module):
    """A stand-in member: its logit is the review's length as it sees it."""

    def __init__(self) -> None:
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(1))

    def forward(self, text, lengths):
        assert text.shape[1] >= int(lengths.max())
        return lengths.float() + self.p


def test_ensemble_members_read_their_own_max_length_and_logits_combine_linearly():
    ens = models.Ensemble([_Fixed(), _Fixed()], [0, 2], ["whole", "cut"])
    text, lengths = _batch()
    assert ens.member_logits(text, lengths).tolist() == [[5, 2], [2, 2], [1, 1]]
    with torch.no_grad():
        ens.weight.copy_(torch.tensor([1.0, -2.0]))
        ens.bias.fill_(0.5)
    assert ens(text, lengths).tolist() == [1.5, -1.5, -0.5]


def test_ensemble_stacking_weights_follow_the_informative_member():
    torch.manual_seed(0)
    labels = (torch.rand(2000) < 0.5).float()
    informative = (labels * 2 - 1) * 2 + torch.randn(2000)
    noise = torch.randn(2000)
    ens = models.Ensemble([_Fixed(), _Fixed()], [0, 0], ["a", "b"])
    ens.fit_weights(torch.stack([informative, noise], dim=1), labels)
    assert ens.weight[0] > 1.0 and abs(ens.weight[1]) < 0.2


def test_hashed_ngram_weights_load_only_under_the_hash_they_were_trained_with(tmp_path):
    from imdbsent import engine, runs
    from imdbsent.config import Config
    from imdbsent.errors import UserError
    cfg = Config(model=ModelConfig(name="nbow", embedding_dim=4, ngram_buckets=10))
    weights = models.build(cfg.model, VOCAB).state_dict()
    current = runs.Checkpoint(weights, {"vocab_size": VOCAB, "ngram_hash": models.NGRAM_HASH})
    assert isinstance(engine.load_model(cfg, current, tmp_path, VOCAB), models.NBOW)
    older = runs.Checkpoint(weights, {"vocab_size": VOCAB})
    with pytest.raises(UserError, match="older n-gram hash"):
        engine.load_model(cfg, older, tmp_path, VOCAB)


_CHANGED = {"embedding_dim": 5, "hidden_dim": 7, "num_layers": 2, "bidirectional": True,
            "dropout": 0.5, "pooling": "max", "packed": True, "filter_sizes": [2],
            "num_filters": 3, "ngram_buckets": 77, "ngrams": 3, "prior_tokens": 5.0,
            "region_size": 3, "region_dim": 4, "region_passes": 2}


@pytest.mark.parametrize("cfg", [c for i, c in enumerate(EVERY_MODEL)
                                 if c.name not in [d.name for d in EVERY_MODEL[:i]]],
                         ids=lambda c: c.name)
def test_a_model_ignores_every_field_that_config_says_it_ignores(cfg):
    """config.MODEL_FIELDS (what `report` shows of a recipe) against the models themselves:
    changing a field it does not list changes neither the weights nor the output."""
    import dataclasses

    from imdbsent import config
    from imdbsent.data import Batch
    assert set(_CHANGED) == {f.name for f in dataclasses.fields(ModelConfig)} - {"name",
                                                                                "members"}
    text, lengths, label = _separable()

    def outcome(c: ModelConfig) -> tuple[dict, torch.Tensor]:
        torch.manual_seed(0)
        model = models.build(c, VOCAB).train()  # dropout, where a model has it, acts
        if hasattr(model, "fit_prior"):
            model.fit_prior([Batch(text, lengths, label)])
        torch.manual_seed(1)
        return {k: v.shape for k, v in model.state_dict().items()}, model(text, lengths)

    shapes, logits = outcome(cfg)
    ignored = [k for k in _CHANGED if k not in config.MODEL_FIELDS[cfg.name]]
    assert ignored
    for key in ignored:
        assert getattr(cfg, key) != _CHANGED[key]
        other_shapes, other = outcome(dataclasses.replace(cfg, **{key: _CHANGED[key]}))
        assert other_shapes == shapes and torch.equal(other, logits), key


def test_a_stacker_of_logits_that_separate_the_labels_stays_finite():
    """A small validation split that the members separate perfectly: plain 0/1 targets drive
    the weights (and the ensemble's probabilities) as far as the optimiser goes; Platt's keep
    them as sure as the split can tell."""
    x = torch.tensor([[-3.0, -2.0], [-1.0, -2.5], [2.0, 1.0], [3.0, 2.5]], dtype=torch.float64)
    labels = torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    weight, bias = models.fit_logistic(x, labels)
    plain = torch.sigmoid(x @ weight + bias)
    assert plain[:2].max() < 1e-3 and plain[2:].min() > 0.999
    weight, bias = models.fit_platt(x, labels)
    probs = torch.sigmoid(x @ weight + bias)
    assert probs[:2].max() < 0.5 < probs[2:].min()
    assert 0.1 < probs.min() and probs.max() < 0.9  # near Platt's 1/4 and 3/4 for 2 and 2
    weight32, bias32 = models.fit_platt(x.float(), torch.tensor([0, 0, 1, 1]))  # int labels
    assert weight32.dtype == torch.float32 and torch.allclose(weight32.double(), weight, atol=1e-3)
