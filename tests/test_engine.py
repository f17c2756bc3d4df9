import dataclasses
from functools import partial

import numpy as np
import pytest
import torch
from torch import nn

from imdbsent import data, engine, models, runs
from imdbsent.config import Config, ModelConfig, TrainConfig
from imdbsent.errors import UserError
from imdbsent.training import Silent


def test_binary_accuracy_rounds_the_sigmoid():
    preds = torch.tensor([2.0, -1.0, 0.5, -3.0])
    assert engine.binary_accuracy(preds, torch.tensor([1.0, 0.0, 0.0, 1.0])).item() == 0.5


def test_binary_accuracy_and_classification_metrics_agree_at_one_half():
    logits = torch.tensor([0.0, 0.0, 0.0, 2.0])  # sigmoid exactly 0.5 for the first three
    labels = torch.tensor([1.0, 1.0, 0.0, 1.0])
    metrics = engine.classification_metrics(logits, labels)
    assert metrics["accuracy"] == engine.binary_accuracy(logits, labels).item() == 0.75
    assert metrics["confusion"]["tp"] == 3  # 0.5 is positive, as predict's threshold says


def test_count_parameters_counts_only_trainable():
    model = nn.Linear(3, 2)
    assert engine.count_parameters(model) == 8
    model.bias.requires_grad_(False)
    assert engine.count_parameters(model) == 6


def test_epoch_time_splits_minutes_and_seconds():
    assert engine.epoch_time(100.0, 100.0 + 125.7) == (2, 5)
    assert engine.epoch_time(0.0, 42.0) == (0, 42)


def test_train_lowers_the_loss_and_evaluate_changes_nothing(prepared_dir):
    torch.manual_seed(0)
    p = data.load_prepared(prepared_dir)
    model = models.build(ModelConfig(name="nbow", embedding_dim=8, ngram_buckets=50),
                         p.tokenizer.get_vocab_size())
    batches = data.Batches(p.split("train"), 16, shuffle=True)
    valid = data.Batches(p.split("valid"), 16)
    criterion = nn.BCEWithLogitsLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    before, _ = engine.evaluate(model, valid, criterion)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    assert engine.evaluate(model, valid, criterion)[0] == before
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())
    seen = []
    for _ in range(3):
        engine.train(model, batches, optimizer, criterion,
                     on_batch=lambda n, _loss, _acc: seen.append(n))
    after, acc = engine.evaluate(model, valid, criterion)
    assert after < before and acc > 0.9
    assert sum(seen) == 3 * 280


def test_classification_metrics_from_a_known_confusion():
    logits = torch.tensor([3.0, 3.0, -3.0, -3.0, 3.0])
    labels = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0])
    m = engine.classification_metrics(logits, labels)
    assert m["confusion"] == {"tn": 1, "fp": 1, "fn": 1, "tp": 2}
    assert m["accuracy"] == pytest.approx(0.6)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)


def test_schedules_warm_up_then_decay():
    assert engine.Schedule("constant", 100)(0) == 1.0
    cosine = engine.Schedule("cosine", 100, 0.1)
    assert cosine(0) == pytest.approx(0.1)
    assert cosine(9) == pytest.approx(1.0)
    assert cosine(10) == pytest.approx(1.0)
    assert cosine(55) == pytest.approx(0.5)
    assert cosine(99) < 0.01 and cosine(100) == 0.0
    assert engine.Schedule("linear", 100, 0.1)(55) == pytest.approx(0.5)
    assert engine.Schedule("constant", 100, 0.1)(50) == 1.0


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_extending_a_schedule_continues_it_without_a_jump(kind):
    schedule = engine.Schedule(kind, 100, 0.1)
    before = [schedule(s) for s in range(61)]
    schedule.extend(60, 200)
    after = [schedule(s) for s in range(60, 201)]
    assert after[0] == pytest.approx(before[-1])  # the step where it was extended: unchanged
    steps = before + after[1:]
    assert all(b <= a + 1e-12 for a, b in zip(steps[10:], steps[11:]))  # decays, never rises
    assert max(abs(b - a) for a, b in zip(steps[10:], steps[11:])) < 0.02  # in small steps
    assert after[-1] == pytest.approx(0.0, abs=1e-12) and after[-2] > 0


def test_extending_a_schedule_that_has_reached_zero_is_refused():
    from imdbsent.errors import UserError
    schedule = engine.Schedule("cosine", 100)
    with pytest.raises(UserError, match="already decayed to zero"):
        schedule.extend(100, 200)
    constant = engine.Schedule("constant", 100)
    constant.extend(100, 200)
    assert constant(150) == 1.0


@pytest.mark.parametrize("name, kind", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam),
                                        ("adamw", torch.optim.AdamW)])
def test_optimizers_by_name(name, kind):
    opt = engine.make_optimizer(TrainConfig(optimizer=name, lr=0.1, momentum=0.9 * (name == "sgd"),
                                            weight_decay=0.01), nn.Linear(2, 1).parameters())
    assert isinstance(opt, kind) and opt.param_groups[0]["lr"] == 0.1
    assert opt.param_groups[0]["weight_decay"] == 0.01


def test_cuda_without_a_gpu_is_a_user_error(monkeypatch):
    from imdbsent.errors import UserError
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="no CUDA device"):
        engine.resolve_device("cuda")
    assert engine.resolve_device("auto").type == "cpu"
    with pytest.raises(UserError, match="no CUDA device"):
        engine.resolve_device(torch.device("cuda", 0))


def test_a_torch_device_is_taken_as_its_name(monkeypatch):
    from imdbsent.errors import BadValue
    assert engine.resolve_device(torch.device("cpu")) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert engine.resolve_device(torch.device("cuda", 1)) == torch.device("cuda", 1)
    assert engine.resolve_device(torch.device("cuda")) == torch.device("cuda", 0)
    with pytest.raises(BadValue, match="'meta'"):
        engine.resolve_device(torch.device("meta"))


def test_calibration_metrics_by_hand():
    probs = torch.tensor([0.93, 0.92, 0.25, 0.65, 0.04, 0.15, 0.85])
    labels = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0])
    m = engine.calibration_metrics(probs, labels)
    bins = {round(b["bin"][0], 1): b for b in m["reliability"]}
    assert set(bins) == {0.0, 0.1, 0.2, 0.6, 0.8, 0.9}
    assert bins[0.9]["examples"] == 2 and bins[0.9]["positive"] == 0.5
    assert bins[0.9]["mean_prob_pos"] == pytest.approx(0.925)
    # per bin |share positive - mean P(pos)|, weighted: 0.04, 0.15 (pos), 0.25, 0.65 (pos),
    # 0.85 (pos), {0.92 (neg), 0.93 (pos)}
    expected = (0.04 + 0.85 + 0.25 + 0.35 + 0.15 + 2 * abs(0.5 - 0.925)) / 7
    assert m["ece"] == pytest.approx(expected)
    # the same as the gap between confidence and accuracy, bin by bin
    assert engine.calibration_metrics(torch.tensor([0.15, 0.85]), torch.tensor([1.0, 1.0]))[
        "ece"] == pytest.approx(0.5 * 0.85 + 0.5 * 0.15)
    squares = [0.07, 0.92, 0.25, 0.35, 0.04, 0.85, 0.15]
    assert m["brier"] == pytest.approx(sum(x * x for x in squares) / 7)


def test_calibration_undoes_overconfidence_and_a_lean_to_one_side():
    gen = torch.Generator().manual_seed(0)
    true_logits = torch.randn(20_000, generator=gen) * 2
    labels = torch.bernoulli(torch.sigmoid(true_logits), generator=gen)
    overconfident = true_logits * 3  # the same ranking, three times too sure
    temperature, bias = engine.fit_calibration(overconfident, labels)
    assert temperature == pytest.approx(3.0, rel=0.05) and bias == pytest.approx(0.0, abs=0.05)
    before = engine.calibration_metrics(torch.sigmoid(overconfident), labels)["ece"]
    after = engine.calibration_metrics(torch.sigmoid(overconfident / temperature), labels)["ece"]
    assert before > 0.1 and after < 0.02
    leaning = true_logits - 1.5  # too sure of neg, as the CNN was: a temperature cannot fix it
    temperature, bias = engine.fit_calibration(leaning, labels)
    assert temperature == pytest.approx(1.0, rel=0.05) and bias == pytest.approx(1.5, rel=0.05)
    assert engine.calibration_metrics(torch.sigmoid(leaning), labels)["ece"] > 0.1
    fixed = torch.sigmoid(leaning / temperature + bias)
    assert engine.calibration_metrics(fixed, labels)["ece"] < 0.02
    assert engine.fit_calibration(-overconfident, labels) == (1.0, 0.0)  # nothing to scale


def test_out_of_fold_stacking_does_not_score_what_it_was_fitted_on():
    gen = torch.Generator().manual_seed(1)
    noise = torch.randn(200, 40, generator=gen, dtype=torch.float64)  # no signal at all
    labels = (torch.rand(200, generator=gen) < 0.5).double()
    weight, bias = models.fit_logistic(noise, labels)
    in_sample = ((noise @ weight + bias >= 0).double() == labels).double().mean().item()
    honest = ((engine.out_of_fold(noise, labels, seed=0) >= 0).double() == labels).double().mean()
    assert in_sample > 0.65 and honest.item() < 0.6  # fitted noise looks good only in sample
    signal = torch.cat([labels.unsqueeze(1) * 4 - 2, noise[:, :1]], dim=1)
    assert ((engine.out_of_fold(signal, labels, seed=0) >= 0).double() == labels).all()


def test_adversarial_perturbation_raises_the_loss_and_changes_training(prepared_dir):
    p = data.load_prepared(prepared_dir)
    cfg = ModelConfig(name="lstm", embedding_dim=8, hidden_dim=8, bidirectional=True,
                      pooling="max", dropout=0.0)
    batch = next(iter(data.Batches(p.split("train"), 32)))
    criterion = nn.BCEWithLogitsLoss()
    torch.manual_seed(0)
    model = models.build(cfg, p.tokenizer.get_vocab_size())
    embedding = engine._embedding_of(model)
    embedded = []
    with models.output_hooked(embedding, partial(engine._keep_with_grad, embedded)):
        clean = criterion(model(batch.text, batch.lengths), batch.label)
    clean.backward()
    perturbed = engine.adversarial_step(model, embedding, embedded[0], batch, criterion, 1.0,
                                        engine.nullcontext())
    assert perturbed > clean.item() + 1e-4  # along the gradient, the loss rises
    assert not embedding._forward_hooks  # no hook left behind

    def trained(epsilon: float) -> torch.Tensor:
        torch.manual_seed(0)
        net = models.build(cfg, p.tokenizer.get_vocab_size())
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1)  # (Adam's first step is a sign)
        engine.train(net, [batch], optimizer, criterion, adversarial=epsilon)
        return net.fc.weight.detach().clone()

    assert torch.equal(trained(0.0), trained(0.0))
    assert not torch.allclose(trained(0.0), trained(1.0))


def test_virtual_adversarial_direction_moves_the_prediction_most_and_ignores_labels(
        prepared_dir):
    p = data.load_prepared(prepared_dir)
    cfg = ModelConfig(name="lstm", embedding_dim=8, hidden_dim=8, bidirectional=True,
                      pooling="max", dropout=0.0)
    batch = next(iter(data.Batches(p.split("unsupervised"), 32)))
    assert (batch.label == -1).all()  # unlabeled: nothing to learn from but the model itself
    torch.manual_seed(0)
    model = models.build(cfg, p.tokenizer.get_vocab_size())
    embedding = engine._embedding_of(model)
    with torch.no_grad():
        clean = torch.sigmoid(model(batch.text, batch.lengths))
    torch.manual_seed(1)
    virtual = engine.virtual_adversarial_step(model, embedding, batch, 1.0, engine.nullcontext())
    assert not embedding._forward_hooks and embedding.weight.grad.abs().sum() > 0

    def divergence(delta: torch.Tensor) -> float:  # the same measure, any perturbation
        with torch.no_grad(), models.output_hooked(embedding, lambda output: output + delta):
            logits = model(batch.text, batch.lengths)
        return nn.functional.binary_cross_entropy_with_logits(logits, clean).item()

    shape = (*batch.text.shape, cfg.embedding_dim)
    randoms = [divergence(engine._per_review_norm(torch.randn(shape), 1.0)) for _ in range(5)]
    assert virtual > max(randoms) + 1e-5  # the power iteration found a worse direction
    assert divergence(torch.zeros(shape)) < min(randoms)  # the clean prediction is the floor


def test_adversarial_perturbations_leave_padding_alone_and_fit_a_cnns_padded_input():
    cfg = ModelConfig(name="cnn", embedding_dim=8, num_filters=4, filter_sizes=[3, 5],
                      dropout=0.0)
    reviews = data.Encoded.from_lists([[5, 6, 7], [5], [8, 9]], [1, 0, 1])
    batch = next(iter(data.Batches(reviews, 3)))  # 3 tokens at most: the CNN pads to 5
    torch.manual_seed(0)
    model = models.build(cfg, 20)
    embedding = engine._embedding_of(model)
    seen = []  # what the convolutions read: the embeddings, perturbed or not (the dropout
    model.dropout.register_forward_hook(  # before the output layer reads [batch, features])
        lambda _m, inputs, _out: seen.append(inputs[0].detach()) if inputs[0].dim() == 3 else None)

    def assert_only_real_tokens_moved(delta: torch.Tensor, epsilon: float) -> None:
        for review, length in enumerate(batch.lengths.tolist()):
            assert delta[review, length:].abs().max() == 0
            assert delta[review].norm().item() == pytest.approx(epsilon, rel=1e-4)

    embedded = []
    with models.output_hooked(embedding, partial(engine._keep_with_grad, embedded)):
        nn.BCEWithLogitsLoss()(model(batch.text, batch.lengths), batch.label).backward()
    engine.adversarial_step(model, embedding, embedded[0], batch, nn.BCEWithLogitsLoss(), 0.5,
                            engine.nullcontext())
    assert_only_real_tokens_moved(seen[-1] - seen[0], 0.5)
    seen.clear()
    engine.virtual_adversarial_step(model, embedding, batch, 0.5, engine.nullcontext())
    assert_only_real_tokens_moved(seen[-1] - seen[0], 0.5)


def test_virtual_adversarial_training_uses_the_unlabeled_reviews(prepared_dir, tmp_path):
    base = dataclasses.replace(Config(data=str(prepared_dir)), model=ModelConfig(
        name="gru", embedding_dim=8, hidden_dim=8))
    base.train = dataclasses.replace(base.train, epochs=1, batch_size=16, optimizer="adam",
                                     lr=0.01, calibrate=False)
    p = data.load_prepared(prepared_dir)

    def weights(virtual: float, name: str, prepared: data.Prepared = p) -> torch.Tensor:
        cfg = dataclasses.replace(base, train=dataclasses.replace(
            base.train, virtual_adversarial=virtual))
        trainer = engine.Trainer(cfg, prepared, tmp_path / name)
        trainer.epoch(1, Silent())
        return trainer.model.fc.weight.detach().clone()

    assert torch.equal(weights(2.0, "a"), weights(2.0, "b"))  # seeded, unlabeled order too
    assert not torch.allclose(weights(0.0, "c"), weights(2.0, "d"))
    other = data.load_prepared(prepared_dir)  # other unlabeled reviews, the same labeled ones
    unlabeled = other.split("unsupervised")
    other._cache["unsupervised"] = unlabeled.take(np.arange(len(unlabeled) // 2))
    assert not torch.allclose(weights(2.0, "e"), weights(2.0, "f", other))
    with pytest.raises(ValueError, match="unlabeled"):
        engine.train(models.build(base.model, 50), [], torch.optim.SGD([nn.Parameter(
            torch.zeros(1))], lr=0.1), nn.BCEWithLogitsLoss(), virtual_adversarial=1.0)


def test_adversarial_training_needs_a_word_embedding(prepared_dir):
    p = data.load_prepared(prepared_dir)
    model = models.build(ModelConfig(name="nblr", ngram_buckets=50), p.tokenizer.get_vocab_size())
    with pytest.raises(engine.UserError, match="word embedding"):
        engine.train(model, [], torch.optim.SGD(model.parameters(), lr=0.1),
                     nn.BCEWithLogitsLoss(), adversarial=1.0)


def test_virtual_adversarial_training_without_unlabeled_reviews_says_how_to_prepare(
        source_dir, tmp_path):
    out = tmp_path / "labeled-only"
    data.prepare(data.PrepareArgs(source=str(source_dir), unsupervised=False, vectors_dim=0), out)
    cfg = Config(data=str(out), model=ModelConfig(name="gru", embedding_dim=8, hidden_dim=8))
    cfg.train = dataclasses.replace(cfg.train, virtual_adversarial=1.0)
    with pytest.raises(engine.UserError, match="--no-unsupervised"):
        engine.Trainer(cfg, data.load_prepared(out), tmp_path / "run")
    empty = data.load_prepared(out)  # a split with no review would loop for ever, unread
    empty._cache["unsupervised"] = data.Encoded.from_lists([], [])
    with pytest.raises(engine.UserError, match="'unsupervised' split is empty"):
        engine.Trainer(cfg, empty, tmp_path / "run2")


def test_weights_that_do_not_fit_say_the_first_mismatch_whole(tmp_path):
    # a long key's size mismatch was cut at 150 characters, in the middle of a shape
    key = "a_rather_long_layer_name_for_the_reverse_direction" * 4  # a line of 300 and more
    model = nn.ModuleDict({key: nn.Conv2d(3, 8, (3, 5))})
    ckpt = runs.Checkpoint({k: torch.zeros(16, *v.shape[1:]) for k, v in
                            model.state_dict().items()}, {})
    with pytest.raises(UserError) as err:
        engine._load_weights(model, ckpt, tmp_path / "best.safetensors")
    assert str(err.value).endswith(
        f"(size mismatch for {key}.weight: copying a param with shape torch.Size([16, 3, 3, 5]) "
        "from checkpoint, the shape in current model is torch.Size([8, 3, 3, 5]))")
    many = nn.Sequential(*[nn.Linear(2, 2) for _ in range(40)])  # 80 missing keys: cut at one
    with pytest.raises(UserError) as err:
        engine._load_weights(many, runs.Checkpoint({}, {}), tmp_path / "best.safetensors")
    said = str(err.value)
    assert said.startswith(f"{tmp_path / 'best.safetensors'}: weights do not fit the configured "
                           'model (Missing key(s) in state_dict: "0.weight", "0.bias", ')
    assert said.endswith('.bias", ...)') and len(said) < len(str(tmp_path)) + 400
