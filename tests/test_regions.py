import numpy as np
import pytest
import torch

from imdbsent import models, regions
from imdbsent.config import ModelConfig
from imdbsent.text import PAD_ID, UNK_ID


def _two_topics(blocks: int = 400, seed: int = 0) -> np.ndarray:
    """A stream of runs of 30 words, each run drawn from one of two disjoint sets of words
    (ids 2-21 and 22-41), with <unk> sprinkled in: words of a set occur beside each other."""
    rng = np.random.default_rng(seed)
    runs = [rng.integers(2, 22, 30) + 20 * (i % 2) for i in range(blocks)]
    stream = np.concatenate(runs)
    stream[rng.random(len(stream)) < 0.05] = UNK_ID
    return stream


def test_region_embeddings_learn_which_words_occur_together(monkeypatch):
    """Regions of words of one set and of the other: far apart once learned, against the
    spread within a set (about 0.5 for the initial random embedding; 11 learned)."""
    monkeypatch.setattr(regions, "BATCH", 64)  # enough steps, large enough, for a small stream
    table, bias = regions.learn(_two_topics(), 42, region=3, dim=8, seed=1, lr=3e-2)
    assert table.shape == (42, 8) and bias.shape == (8,)
    assert not table[PAD_ID].any()
    first = torch.randint(2, 22, (200, 3), generator=torch.Generator().manual_seed(0))
    z_first, z_second = (torch.relu(table[ids].sum(1) + bias) for ids in (first, first + 20))
    gap = (z_first.mean(0) - z_second.mean(0)).norm()
    spread = sum((z - z.mean(0)).norm(dim=1).mean() for z in (z_first, z_second)) / 2
    assert gap > 3 * spread


def test_region_embeddings_are_seeded_and_report_each_step():
    stream = _two_topics(blocks=40)
    seen = []
    one = regions.learn(stream, 42, 3, 8, seed=7, report=lambda step, steps: seen.append(
        (step, steps)))
    total = regions.steps(len(stream), 3)
    assert seen == [(step, total) for step in range(1, total + 1)]
    assert all(torch.equal(a, b) for a, b in zip(one, regions.learn(stream, 42, 3, 8, seed=7)))
    assert not torch.equal(one[0], regions.learn(stream, 42, 3, 8, seed=8)[0])


def test_each_pass_reads_every_region_once_more_and_goes_on_learning(monkeypatch):
    monkeypatch.setattr(regions, "BATCH", 64)
    stream = _two_topics(blocks=40)  # 1,200 words: 1,191 regions of 3 with both neighbours
    seen = []
    twice = regions.learn(stream, 42, 3, 8, seed=7, passes=2,
                          report=lambda step, steps: seen.append((step, steps)))
    assert seen == [(step, 38) for step in range(1, 39)]  # 2 x 1,191 regions, 64 a step
    assert not torch.equal(twice[0], regions.learn(stream, 42, 3, 8, seed=7)[0])


def test_a_model_learns_its_region_embeddings_in_the_passes_its_recipe_asks(monkeypatch):
    monkeypatch.setattr(regions, "BATCH", 64)
    stream = _two_topics(blocks=40)
    cfg = ModelConfig(name="lstm", embedding_dim=8, hidden_dim=6, region_size=3, region_dim=8,
                      region_passes=2)
    model = models.build(cfg, 42)
    seen = []
    model.regions.learn(stream, seed=7, report=lambda step, steps: seen.append(steps))
    assert set(seen) == {regions.steps(len(stream), 3, passes=2)}
    assert torch.equal(model.regions.table, regions.learn(stream, 42, 3, 8, seed=7, passes=2)[0])


def test_a_stream_too_short_for_a_region_and_its_neighbours_learns_nothing():
    seen = []
    table, bias = regions.learn(np.array([5, 6, 7], dtype=np.int32), 10, 3, 4, seed=0,
                                report=lambda *step: seen.append(step))
    assert seen == [] and table.shape == (10, 4) and not bias.any()


def test_centred_sums_the_region_around_each_word_and_stops_at_the_ends():
    embedded = torch.arange(1.0, 6.0)[None, :, None]  # one text of 5 words, one dimension
    out = regions.centred(embedded, torch.tensor([-2.0]), region=3)
    assert out[0, :, 0].tolist() == [1.0, 4.0, 7.0, 10.0, 7.0]  # relu(neighbours' sum - 2)
    five = regions.centred(embedded, torch.zeros(1), region=5)
    assert five[0, :, 0].tolist() == [6.0, 10.0, 15.0, 14.0, 12.0]


@pytest.mark.parametrize("region", [1, 3, 5])
def test_centred_sums_are_exact_sums_and_their_own_gradient(region):
    torch.manual_seed(0)
    x = torch.randn(2, 6, 3, dtype=torch.float64, requires_grad=True)
    half = (region - 1) // 2
    padded = torch.nn.functional.pad(x, (0, 0, half, half))
    by_hand = sum(padded[:, k:k + 6] for k in range(region))
    assert torch.allclose(regions.centred_sums(x, region), by_hand, rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(lambda t: regions.centred_sums(t, region), (x,))
    running = regions.region_sums(x, region)[:, half:half + 6]  # what `centred` sums
    assert torch.allclose(regions.centred_sums(x, region), running)


def test_a_recurrent_model_with_region_embeddings_starts_as_it_would_without():
    """The projection starts at zero: with the same word weights, the same logits, whatever
    the region embeddings learned; once the projection is trained, they count."""
    cfg = ModelConfig(name="gru", embedding_dim=8, hidden_dim=6, bidirectional=True,
                      pooling="max")
    torch.manual_seed(0)
    plain = models.build(cfg, 42).eval()
    with_regions = models.build(ModelConfig(**{**cfg.__dict__, "region_size": 3,
                                               "region_dim": 8}), 42).eval()
    with_regions.load_state_dict(plain.state_dict(), strict=False)
    with_regions.regions.learn(_two_topics(blocks=40), seed=3, report=lambda *_: None)
    assert with_regions.regions.table.abs().sum() > 0
    text, lengths = torch.tensor([[5, 6, 7, 30, 31], [3, 4, 0, 0, 0]]), torch.tensor([5, 2])
    with torch.no_grad():
        torch.testing.assert_close(with_regions(text, lengths), plain(text, lengths))
        torch.nn.init.normal_(with_regions.regions.project.weight)
        assert not torch.allclose(with_regions(text, lengths), plain(text, lengths))
    names = set(with_regions.state_dict())  # saved with the model, learned once
    assert {"regions.table", "regions.bias", "regions.project.weight"} <= names
    assert not any(p is with_regions.regions.table for p in with_regions.parameters())
