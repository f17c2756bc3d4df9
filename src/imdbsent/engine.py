"""Training and evaluation: the tutorial's functions by name, and the fit loop around them.

The engine reports progress through a `Reporter` (any object with its methods); it never draws.
"""

from __future__ import annotations

import itertools
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from imdbsent import config as configs
from imdbsent import distributed, models, runs, text, threads, vectors
from imdbsent.averages import Averages
from imdbsent.config import Config, TrainConfig
from imdbsent.data import Batch, Batches, Prepared
from imdbsent.errors import BadValue, UserError

OnBatch = Callable[[int, float, float], None]  # (examples in batch, loss, accuracy)
UNLABELED_NEEDED = ("train.virtual_adversarial trains on unlabeled reviews: prepare from a "
                    "source that has them, without --no-unsupervised")


def count_parameters(model: nn.Module) -> int:
    """The number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def binary_accuracy(preds: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The fraction of logits whose rounded sigmoid (0.5 rounding up) equals the 0/1 label."""
    rounded_preds = (torch.sigmoid(preds) >= 0.5).float()  # not torch.round, which takes 0.5
    correct = (rounded_preds == y).float()  # to 0: as in classification_metrics and predict
    return correct.sum() / len(correct)


def train(model: nn.Module, iterator: Iterable[Batch], optimizer: torch.optim.Optimizer,
          criterion: nn.Module, *, scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
          clip: float = 0.0, on_batch: OnBatch | None = None, sync: bool = False,
          amp: AbstractContextManager = nullcontext(), adversarial: float = 0.0,
          virtual_adversarial: float = 0.0, unlabeled: Iterator[Batch] | None = None
          ) -> tuple[float, float]:
    """One epoch of training; the mean loss and accuracy over its examples (over every
    process's examples with `sync`, in a distributed training). The forward pass and the loss
    run within `amp` (an autocast), the backward pass and the step outside it. With
    `adversarial` (epsilon > 0), each batch also trains on its word embeddings perturbed along
    the loss gradient (`adversarial_step`); with `virtual_adversarial` (epsilon > 0), also on
    the next batch of `unlabeled` (`virtual_adversarial_step`)."""
    device = _device_of(model)
    model.train()
    total_loss = total_acc = 0.0
    seen = 0
    embedding = _embedding_of(model) if adversarial or virtual_adversarial else None
    if virtual_adversarial and unlabeled is None:
        raise ValueError("virtual adversarial training needs batches of unlabeled reviews")
    for batch in threads.balanced(iterator):
        batch = batch.to(device)
        optimizer.zero_grad()
        embedded: list[torch.Tensor] = []  # the clean pass's embeddings, for adversarial
        with (models.output_hooked(embedding, partial(_keep_with_grad, embedded))
              if adversarial else nullcontext()), _unsynced(model, embedding is not None):
            with amp:
                predictions = model(batch.text, batch.lengths)
                loss = criterion(predictions, batch.label)
            loss.backward()
        if adversarial:
            with _unsynced(model, bool(virtual_adversarial)):
                adversarial_step(model, embedding, embedded[0], batch, criterion, adversarial,
                                 amp)
        if virtual_adversarial:
            virtual_adversarial_step(model, embedding, next(unlabeled).to(device),
                                     virtual_adversarial, amp)
        acc = binary_accuracy(predictions, batch.label)
        if clip:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        n = len(batch.label)
        loss_value, acc_value = loss.item(), acc.item()
        total_loss += loss_value * n
        total_acc += acc_value * n
        seen += n
        if on_batch:
            on_batch(n, loss_value, acc_value)
    return _means(total_loss, total_acc, seen, sync)


def adversarial_step(model: nn.Module, embedding: nn.Module, embedded: torch.Tensor,
                     batch: Batch, criterion: nn.Module, epsilon: float,
                     amp: AbstractContextManager) -> float:
    """Adversarial training on the embeddings (Miyato, Dai & Goodfellow 2017): add to each
    review's word embeddings the perturbation of L2 norm `epsilon` (over the whole review)
    along the gradient of the loss that the clean pass left in `embedded.grad`, and
    accumulate the gradient of the loss on the perturbed review; returns that loss. Costs one
    more forward and backward pass a batch. Padding is not perturbed."""
    real = models.token_mask(batch.lengths, embedded)
    delta = _per_review_norm(embedded.grad.detach() * real, epsilon)
    with models.output_hooked(embedding, lambda output: output + delta.to(output.dtype)):
        with amp:
            loss = criterion(model(batch.text, batch.lengths), batch.label)
        loss.backward()
    return loss.item()


def virtual_adversarial_step(model: nn.Module, embedding: nn.Module, batch: Batch,
                             epsilon: float, amp: AbstractContextManager, xi: float = 0.1
                             ) -> float:
    """Virtual adversarial training on unlabeled reviews (Miyato, Dai & Goodfellow 2017): find,
    by one power iteration from a random direction of L2 norm `xi` a review, the perturbation
    of the word embeddings, of norm `epsilon` a review, that moves the model's prediction
    most, and accumulate the gradient of the divergence (Bernoulli KL, up to a constant) of
    the perturbed prediction from the clean one; returns it. Needs no label: three more
    passes, one without gradient. Padding is not perturbed."""
    embedded = []  # the clean pass's embedding output, for its shape (a CNN pads short text)
    with torch.no_grad(), amp, models.output_hooked(embedding, embedded.append):
        clean = torch.sigmoid(model(batch.text, batch.lengths).float())

    def divergence(delta: torch.Tensor) -> torch.Tensor:
        with models.output_hooked(embedding, lambda output: output + delta.to(output.dtype)):
            with amp:
                logits = model(batch.text, batch.lengths)
        return nn.functional.binary_cross_entropy_with_logits(logits.float(), clean)

    real = models.token_mask(batch.lengths, embedded[0])
    direction = _per_review_norm(torch.randn_like(embedded[0], dtype=torch.float) * real, xi)
    direction.requires_grad_()
    with _unsynced(model, True):
        (grad,) = torch.autograd.grad(divergence(direction), direction)
    loss = divergence(_per_review_norm(grad.detach() * real, epsilon))
    loss.backward()
    return loss.item()


def _per_review_norm(delta: torch.Tensor, norm: float) -> torch.Tensor:
    """`delta` [batch, time, dim] scaled to L2 norm `norm` for each review."""
    length = delta.flatten(1).norm(dim=1).clamp(min=1e-12)
    return norm * delta / length.view(-1, *[1] * (delta.dim() - 1))


def _unsynced(model: nn.Module, unsynced: bool) -> AbstractContextManager:
    """DDP's `no_sync` when `unsynced` (a pass whose gradient more passes will add to, before
    the last one all-reduces the sum), else nothing."""
    return model.no_sync() if unsynced and hasattr(model, "no_sync") else nullcontext()


def _embedding_of(model: nn.Module) -> nn.Module:
    """The word embedding (an nn.Embedding named `embedding`) of a model, or of the one DDP
    wraps, for adversarial training."""
    inner = getattr(model, "module", model)
    embedding = getattr(inner, "embedding", None)
    if not isinstance(embedding, nn.Embedding):
        raise UserError(f"train.adversarial and virtual_adversarial need a model with a word "
                        f"embedding ({', '.join(configs.EMBEDDED)}), not "
                        f"{type(inner).__name__.lower()}")
    return embedding


def _keep_with_grad(kept: list[torch.Tensor], output: torch.Tensor) -> None:
    """Keep a forward hook's `output` in `kept`, its gradient retained by the backward pass."""
    output.retain_grad()
    kept[:] = [output]


def evaluate(model: nn.Module, iterator: Iterable[Batch], criterion: nn.Module,
             on_batch: OnBatch | None = None, sync: bool = False) -> tuple[float, float]:
    """The mean loss and accuracy over the iterator's examples, without training (over every
    process's share with `sync`)."""
    device = _device_of(model)
    model.eval()
    total_loss = total_acc = 0.0
    seen = 0

    def score(batch: Batch) -> tuple[int, float, float]:
        with torch.inference_mode():
            batch = batch.to(device)
            predictions = model(batch.text, batch.lengths)
            return (len(batch.label), criterion(predictions, batch.label).item(),
                    binary_accuracy(predictions, batch.label).item())

    for n, loss, acc in threads.mapped(score, iterator, parallel=device.type == "cpu"):
        total_loss += loss * n
        total_acc += acc * n
        seen += n
        if on_batch:
            on_batch(n, loss, acc)
    return _means(total_loss, total_acc, seen, sync)


def _means(total_loss: float, total_acc: float, seen: int, sync: bool) -> tuple[float, float]:
    if sync:
        total_loss, total_acc, seen = distributed.all_sum([total_loss, total_acc, seen])
    return total_loss / max(seen, 1), total_acc / max(seen, 1)


def epoch_time(start_time: float, end_time: float) -> tuple[int, int]:
    """Elapsed time as whole minutes and seconds."""
    elapsed_time = end_time - start_time
    elapsed_mins = int(elapsed_time / 60)
    elapsed_secs = int(elapsed_time - (elapsed_mins * 60))
    return elapsed_mins, elapsed_secs


def predict_logits(model: nn.Module, iterator: Iterable[Batch],
                   score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Every logit and label of the iterator, on the CPU, in iteration order. `score` replaces
    the model's forward (e.g. an ensemble's per-member logits)."""
    device = _device_of(model)
    forward = score or model
    model.eval()

    def scored(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.inference_mode():
            return forward(batch.to(device).text, batch.lengths).float().cpu(), batch.label

    logits, labels = [], []
    for batch_logits, batch_labels in threads.mapped(scored, iterator,
                                                     parallel=device.type == "cpu"):
        logits.append(batch_logits)
        labels.append(batch_labels)
    if not logits:  # e.g. a process's share of a split smaller than the world
        return torch.empty(0), torch.empty(0)
    return torch.cat(logits), torch.cat(labels)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor,
                           threshold: float = 0.5) -> dict[str, Any]:
    """Loss, accuracy, precision, recall and F1 of the positive class, the confusion matrix,
    and how well the probabilities are calibrated (`calibration_metrics`)."""
    loss = nn.functional.binary_cross_entropy_with_logits(logits, labels).item()
    probs = torch.sigmoid(logits.double())  # as predict computes them
    pred = probs >= threshold
    truth = labels >= 0.5
    tp = int((pred & truth).sum())
    fp = int((pred & ~truth).sum())
    fn = int((~pred & truth).sum())
    tn = int((~pred & ~truth).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"examples": len(labels), "loss": loss, "accuracy": (tp + tn) / max(len(labels), 1),
            "precision": precision, "recall": recall, "f1": f1,
            "confusion": {"tn": tn, "fp": fp, "fn": fn, "tp": tp},
            **calibration_metrics(probs, labels)}


def calibration_metrics(probs: torch.Tensor, labels: torch.Tensor, bins: int = 10
                        ) -> dict[str, Any]:
    """Whether P(pos) means what it says: the Brier score, the expected calibration error over
    `bins` equal-width bins of P(pos) (the gap between the mean P(pos) and the share of
    positives in each bin, weighted by its examples; at least the top-label ECE over bins of
    the confidence max(p, 1 - p), whose bins each merge a P(pos) bin with its mirror, where
    gaps of opposite sign cancel), and each non-empty bin's row of the reliability table."""
    probs, labels = probs.double(), labels.double()
    index = torch.clamp((probs * bins).long(), max=bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        members = index == b
        count = int(members.sum())
        if not count:
            continue
        mean_p, positive = probs[members].mean().item(), labels[members].mean().item()
        ece += count / len(probs) * abs(positive - mean_p)
        table.append({"bin": [b / bins, (b + 1) / bins], "examples": count,
                      "mean_prob_pos": mean_p, "positive": positive})
    brier = ((probs - labels) ** 2).mean().item() if len(probs) else 0.0
    return {"ece": ece, "brier": brier, "reliability": table}


def out_of_fold(features: torch.Tensor, labels: torch.Tensor, seed: int, folds: int = 5
                ) -> torch.Tensor:
    """Stacked logits of each example from a logistic regression fitted on the other folds
    (cross-fitting), so that a stacker's validation figures are honest estimates, not scores
    of the examples it was fitted on."""
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    out = torch.empty(len(labels), dtype=features.dtype)
    for k in range(folds):
        held = order[k::folds]
        rest = torch.ones(len(labels), dtype=torch.bool)
        rest[held] = False
        weight, bias = models.fit_platt(features[rest], labels[rest])
        out[held] = features[held] @ weight + bias
    return out


def fit_calibration(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """The temperature T and bias b that minimise the log loss of sigmoid(logit / T + b) on
    held-out logits (Platt scaling: a logistic regression on the logit alone). The bias undoes
    a lean to one side that a temperature cannot (the CNN's, under-predicting pos, kept an ECE
    of 0.055 with a temperature alone). Platt's targets (`models.fit_platt`) keep the fit
    finite where the model separates the validation split perfectly. (1.0, 0.0), no change,
    when the logits do not order the labels at all."""
    weight, bias = models.fit_platt(logits.double().unsqueeze(1), labels.double())
    if weight.item() <= 0:
        return 1.0, 0.0
    return 1.0 / weight.item(), bias.item()


class Reporter(Protocol):
    """What the fit loop tells its caller; the CLI draws it, tests record it. `regions` is the
    progress of learning a model's region embeddings, after `start` and before the first
    epoch."""

    def start(self, run: Path, parameters: int, device: str, first_epoch: int) -> None: ...
    def epoch_start(self, epoch: int, batches: int) -> None: ...
    def batch(self, examples: int, loss: float, acc: float) -> None: ...
    def epoch_end(self, record: dict[str, Any]) -> None: ...
    def test(self, record: dict[str, Any]) -> None: ...
    def regions(self, step: int, steps: int) -> None: ...


@dataclass
class FitResult:
    run: Path
    epochs_run: int
    best_epoch: int
    test: dict[str, Any]


def resolve_device(name: str | torch.device, local_rank: int = 0) -> torch.device:
    """`auto` is CUDA when available, else the CPU; asking for CUDA without one is an error.
    CUDA is the GPU of the process's local rank (one GPU a process under torchrun), or the one
    a `torch.device` names (the Python API's callers may give one)."""
    if isinstance(name, torch.device):
        local_rank = local_rank if name.index is None else name.index
        name = name.type
    if name not in configs.DEVICES:
        raise BadValue("device", f"must be one of {', '.join(configs.DEVICES)}, not {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device cuda: no CUDA device is available here (use cpu or auto)")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"local rank {local_rank} has no GPU of its own (this machine has "
                            f"{torch.cuda.device_count()}): start at most that many processes")
        return torch.device("cuda", local_rank)
    return torch.device(name)


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """Training's forward precision: bf16 autocast (matrix products in bfloat16, losses and
    reductions in float32; on the CPU too), or float32 throughout. Validation, calibration
    and the test run in float32, as `evaluate` and `predict` do."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def check_precision(cfg: Config, device: torch.device) -> None:
    """Refuse, before anything trains, a precision `device` cannot train `cfg`'s model in: bf16
    on a GPU without bfloat16, or an LSTM in bf16 on a CPU without oneDNN's bfloat16 (AVX-512
    BF16 or AMX; with AVX2 alone torch's LSTM fails in bf16, where other layers emulate it)."""
    if cfg.train.precision != "bf16":
        return
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("--precision bf16: this GPU has no bfloat16; use --precision fp32")
    if device.type == "cpu" and cfg.model.name == "lstm" and not cpu_bf16():
        raise UserError(f"{cfg.recipe or 'the recipe'}: an LSTM trains in bf16 only on a CPU with "
                        "AVX-512 BF16 or AMX, which this one lacks; train it in fp32 (--precision "
                        "fp32, or precision = \"fp32\" in its recipe)")


def cpu_bf16() -> bool:
    """Whether this CPU has oneDNN's bfloat16 kernels (AVX-512 BF16 or AMX)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_optimizer(cfg: TrainConfig, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)
    kind = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[cfg.optimizer]
    return kind(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


class Schedule:
    """The learning-rate multiplier per optimizer step: a linear warm-up over the first
    `warmup` fraction of the steps, then constant, linear decay or cosine decay to zero at
    `total`. A callable for `LambdaLR`, whose state_dict keeps its fields.

    `extend` moves the end to a new total without a jump: the decay goes on from the multiplier
    and the phase it has reached, stretched over the steps that are left.
    """

    def __init__(self, kind: str, total: int, warmup: float = 0.0) -> None:
        self.kind, self.total = kind, total
        self.warm = int(warmup * total)
        self.anchor_step, self.anchor_phase = self.warm, 0.0  # where the decay (re)starts

    def phase(self, step: int) -> float:
        """How far the decay has gone at `step`, from 0 (start) to 1 (end)."""
        done = (step - self.anchor_step) / max(self.total - self.anchor_step, 1)
        return min(self.anchor_phase + (1.0 - self.anchor_phase) * max(done, 0.0), 1.0)

    def __call__(self, step: int) -> float:
        if step < self.warm:
            return (step + 1) / self.warm
        if self.kind == "constant":
            return 1.0
        if self.kind == "linear":
            return 1.0 - self.phase(step)
        return 0.5 * (1.0 + math.cos(math.pi * self.phase(step)))

    def extend(self, step: int, total: int) -> None:
        """End at `total` steps instead, continuing smoothly from `step` (steps taken)."""
        if total == self.total:
            return
        if self.kind != "constant" and step >= self.warm:
            if self(step) <= 0.0:
                raise UserError("the learning rate has already decayed to zero, so more epochs "
                                "would train nothing: start a new run with more --epochs")
            self.anchor_phase, self.anchor_step = self.phase(step), step
        self.total = total


class Trainer:
    """One model trained in a run directory, step by step: set up (fresh, or restored from
    `last`), then epochs, each ending with its checkpoints, then the test of the best.

    The run's progress lives in `last`'s metadata (epoch, best loss and epoch, epochs without
    improvement, scheduler): `last` is the commit point of an epoch, and metrics.jsonl is
    reconciled with it on resume, so a kill between the two loses no epoch's line.

    In a distributed training (`distributed.session`) every process runs this same loop on its
    share of the batches, with DistributedDataParallel averaging the gradients and the metrics
    summed over all processes, so that all agree on the losses, the best epoch and when to stop;
    rank 0 alone reads and writes the run.
    """

    def __init__(self, cfg: Config, data: Prepared, run: Path, *, resume: bool = False,
                 regions: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        self.cfg, self.data, self.run, self.shared_regions = cfg, data, run, regions
        t = cfg.train
        self.world = distributed.world()
        seed_everything(t.seed)
        self.device = resolve_device(t.device, self.world.local_rank)
        check_precision(cfg, self.device)
        self.vocab_size = data.tokenizer.get_vocab_size()
        self.max_length = t.max_length or None
        self.model = models.build(cfg.model, self.vocab_size)
        if t.adversarial or t.virtual_adversarial:
            _embedding_of(self.model)  # refused before the run line and the first batch
        if self.world.rank:  # dropout of its own; rank 0 keeps a one-process run's stream
            torch.manual_seed(t.seed + self.world.rank)
        last = distributed.on_main(self._load_last) if resume else None
        self.regions_seconds: float | None = None  # learning region embeddings; epoch 1 says
        if last is None:  # a fresh start (its region embeddings are learned in fit)
            if self.world.main:  # the others start from rank 0's weights (wrap)
                self._initialise()
        self.model.to(self.device)
        shard, pin = self.world.size > 1, self.device.type == "cuda"
        self.train_batches = Batches(data.split("train"), t.batch_size, shuffle=True, seed=t.seed,
                                     max_length=self.max_length, crop=t.crop,
                                     sentence_ends=text.sentence_end_ids(data.tokenizer),
                                     shard=shard, pin=pin)
        self.valid_batches = Batches(data.split("valid"), t.batch_size, max_length=self.max_length,
                                     shard=shard, pin=pin)
        data.require("test")  # read once training ends
        self.unlabeled_batches = None
        if t.virtual_adversarial:
            unlabeled = data.split("unsupervised", UNLABELED_NEEDED)
            if not len(unlabeled):
                raise UserError(f"{data.folder}: the 'unsupervised' split is empty "
                                f"({UNLABELED_NEEDED})")
            self.unlabeled_batches = Batches(unlabeled, t.batch_size, shuffle=True, seed=t.seed,
                                             max_length=self.max_length, shard=shard, pin=pin)
        self.optimizer = make_optimizer(t, self.model.parameters())
        self.schedule = Schedule(t.schedule, t.epochs * len(self.train_batches), t.warmup)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.schedule)
        self.criterion = nn.BCEWithLogitsLoss().to(self.device)
        self.averages = Averages(self.model, t.averages, self.optimizer)
        self.meta = {"vocab_size": self.vocab_size, "model": cfg.model.name,
                     "ngram_hash": models.NGRAM_HASH, "data_fingerprint": data.fingerprint,
                     "parameters": count_parameters(self.model)}
        self.first_epoch, self.best_loss, self.best_epoch, self.stale = 1, math.inf, 0, 0
        if last is not None:
            self._restore(last)
        self.net = distributed.wrap(self.model, self.device)

    def learn_regions(self, report: Callable[[int, int], None]) -> None:
        """A fresh start of a model with region embeddings: learn them from the training and
        unlabeled reviews, `report(step, steps)` as they go, or take the `regions` (E, b) that
        another member of its ensemble learned alike (`shared_regions`). Every rank learns the
        same ones (a seeded pass on the CPU): a rank that waited minutes for rank 0's would
        pass the --dist-timeout."""
        regions = getattr(self.model, "regions", None)
        if regions is not None and self.shared_regions is not None:
            regions.table.copy_(self.shared_regions[0])
            regions.bias.copy_(self.shared_regions[1])
        elif regions is not None:
            start = time.time()
            regions.learn(self.data.unlabeled_stream(), self.cfg.train.seed, report)
            self.regions_seconds = round(time.time() - start, 3)

    def _initialise(self) -> None:
        """A fresh start: word vectors into the embedding, a prior from the training data."""
        t = self.cfg.train
        if t.vectors:
            vectors.load_into(self.model, self.data.tokenizer, self.data.vectors_file(t.vectors))
        if hasattr(self.model, "fit_prior"):  # models with a prior from the training data (nblr)
            self.model.fit_prior(Batches(self.data.split("train"), 256, max_length=self.max_length))

    def _load_last(self) -> runs.Checkpoint | None:
        """`last`, checked against the data and the epochs asked for (rank 0 reads it)."""
        path = self.run / runs.LAST
        if not path.exists():
            if runs.trained_without_last(self.run):  # starting again would overwrite them
                raise UserError(f"{path}: missing, so {self.run} cannot be resumed (it trained "
                                "before: its best model and metrics would be overwritten); "
                                "start a new run")
            return None  # stopped before its first epoch ended: nothing to lose
        last = runs.load_checkpoint(path)
        runs.check_data(self.run, self.data, last.meta.get("data_fingerprint"))
        done, patience = last.meta["epoch"], self.cfg.train.patience
        if runs.tested(self.run):  # finished: resuming it would only test it again
            finished = (f"{self.run} has finished: it trained {done} epoch{'s' * (done != 1)} "
                        "and was tested")
            if patience and last.meta["stale_epochs"] >= patience:
                raise UserError(f"{self.run} has finished: it stopped early after {done} epochs "
                                f"({patience} without a better validation loss) and was tested")
            if last.meta["metrics"].get("lr") == 0.0:  # the schedule ended: nothing to extend
                raise UserError(f"{finished}, and its learning rate decayed to zero, so more "
                                "epochs would train nothing: start a new run with more --epochs")
            if self.cfg.train.epochs <= done:
                raise UserError(f"{finished}; resume with --epochs {done + 1} or more to train on")
        if self.cfg.train.epochs < done:
            raise UserError(f"--epochs {self.cfg.train.epochs}: {self.run} has already trained "
                            f"{done} epochs; resume with --epochs {done} or more")
        return last

    def _restore(self, last: runs.Checkpoint) -> None:
        """Continue after `last`'s epoch: weights, optimizer, scheduler and RNG state as they
        were, metrics.jsonl made to agree with it, the schedule stretched if epochs grew."""
        path = self.run / runs.LAST
        _load_weights(self.model, last, path)
        try:
            self.optimizer.load_state_dict(last.optimizer)
            self.scheduler.load_state_dict(last.meta["scheduler"])
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{path}: optimizer state does not fit the run's optimizer "
                            f"({type(exc).__name__}: {exc})") from None
        self.schedule.extend(self.scheduler.last_epoch, self.cfg.train.epochs * len(self.train_batches))
        if last.rng is not None:  # one row a process in a distributed run (copied: torch
            # crashes on a row view of the stacked states)
            torch.set_rng_state((last.rng[self.world.rank] if last.rng.dim() == 2
                                 else last.rng).clone())
        self.averages.restore(last.averages, last.meta.get("averages_best"), path)
        self.first_epoch = last.meta["epoch"] + 1
        self.best_loss, self.best_epoch, self.stale = (
            last.meta["best_valid_loss"], last.meta["best_epoch"], last.meta["stale_epochs"])
        if self.world.main:
            runs.reconcile_metrics(self.run, last.meta["metrics"])

    def fit(self, reporter: Reporter) -> FitResult:
        """Train the remaining epochs (stopping early after `patience` epochs without a better
        validation loss), then test the best checkpoint. An epoch whose validation loss is not
        a number (the weights diverged) is not kept: training stops there, and the best epoch
        before it is tested, or, with none, the run fails."""
        reporter.start(self.run, count_parameters(self.model), str(self.device), self.first_epoch)
        if self.first_epoch == 1:  # a fresh start: no checkpoint held them
            self.learn_regions(reporter.regions)
        epoch, diverged = self.first_epoch - 1, None
        patience = self.cfg.train.patience
        while epoch < self.cfg.train.epochs and not (patience and self.stale >= patience):
            epoch += 1
            record = self.epoch(epoch, reporter)
            if not math.isfinite(record["valid_loss"]):
                reporter.epoch_end(record)
                diverged = epoch
                if not self.best_epoch:
                    raise distributed.everywhere(
                        f"training diverged in epoch {epoch} (validation loss "
                        f"{record['valid_loss']}): try a lower --lr")
                break
            self.checkpoint(record)
            reporter.epoch_end(record)
        test = self.test(diverged)
        reporter.test(test)
        return FitResult(self.run, epoch, test["best_epoch"], test)

    def epoch(self, epoch: int, reporter: Reporter) -> dict[str, Any]:
        """Train one epoch and validate; the epoch's record."""
        self.train_batches.epoch = epoch
        reporter.epoch_start(epoch, len(self.train_batches))
        start_time = time.time()
        sync = self.world.size > 1
        train_loss, train_acc = train(self.net, self.train_batches, self.optimizer,
                                      self.criterion, scheduler=self.scheduler,
                                      clip=self.cfg.train.clip_grad, on_batch=reporter.batch,
                                      sync=sync, amp=autocast(self.device, self.cfg.train.precision),
                                      adversarial=self.cfg.train.adversarial,
                                      virtual_adversarial=self.cfg.train.virtual_adversarial,
                                      unlabeled=self.unlabeled(epoch))
        valid_loss, valid_acc = evaluate(self.model, self.valid_batches, self.criterion, sync=sync)
        averages = self.averages.validate(
            partial(evaluate, iterator=self.valid_batches, criterion=self.criterion, sync=sync))
        improved = valid_loss < self.best_loss
        if improved:
            self.best_loss, self.best_epoch, self.stale = valid_loss, epoch, 0
        else:
            self.stale += 1
        return {"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc,
                "valid_loss": valid_loss, "valid_acc": valid_acc,
                "seconds": round(time.time() - start_time, 3), "best": improved,
                "lr": self.scheduler.get_last_lr()[0],
                **({"averages": averages} if averages else {}),
                **({"regions_seconds": self.regions_seconds} if epoch == 1 and
                   self.regions_seconds is not None else {})}

    def unlabeled(self, epoch: int) -> Iterator[Batch] | None:
        """The unlabeled reviews' batches for virtual adversarial training in `epoch`, in an
        order of that epoch (so a resumed run sees the same), begun again when they run out."""
        batches = self.unlabeled_batches
        if batches is None:
            return None

        def endless() -> Iterator[Batch]:
            for rerun in itertools.count():
                batches.epoch = epoch * 1_000 + rerun
                yield from batches
        return endless()

    def checkpoint(self, record: dict[str, Any]) -> None:
        """Save `best` and each moving average that the epoch improved, then `last` (the
        commit point, with every process's RNG state and the running averages), then the
        epoch's line in metrics.jsonl; rank 0 writes."""
        rng = distributed.gather(torch.get_rng_state())
        if not self.world.main:
            return
        weights = self.model.state_dict()
        meta = {**self.meta, "epoch": record["epoch"], "metrics": record}
        if record["best"]:
            runs.save_checkpoint(self.run / runs.BEST, runs.Checkpoint(weights, meta))
        for name, average in record.get("averages", {}).items():
            if average["best"]:
                runs.save_checkpoint(self.run / runs.average_file(name), runs.Checkpoint(
                    self.averages.weights(name), {**meta, "average": name}))
        runs.save_checkpoint(self.run / runs.LAST, runs.Checkpoint(
            weights, {**meta, "best_valid_loss": self.best_loss, "best_epoch": self.best_epoch,
                      "stale_epochs": self.stale, "scheduler": self.scheduler.state_dict(),
                      **({"averages_best": self.averages.best} if self.averages.models else {})},
            optimizer=self.optimizer.state_dict(),
            rng=torch.stack(rng) if len(rng) > 1 else rng[0],
            averages=self.averages.state() or None))
        runs.append_metrics(self.run, record)

    def calibrate(self) -> tuple[float, float]:
        """Calibrate each moving average that has a best checkpoint, then the best checkpoint,
        left loaded; the best's temperature and bias (`calibrated`)."""
        for name, loss in self.averages.best.items():
            if math.isfinite(loss):
                self.calibrated(self.run / runs.average_file(name))
        return self.calibrated(self.run / runs.BEST)

    def calibrated(self, path: Path) -> tuple[float, float]:
        """Load the checkpoint at `path` and fit its temperature and bias on the validation
        split (unless the recipe says `calibrate = false`, or validation is empty), stored in
        its metadata so that the calibration always goes with the weights it was fitted to."""
        best = distributed.on_main(lambda: runs.load_checkpoint(path))
        _load_weights(self.model, best, path)
        if not (self.cfg.train.calibrate and len(self.valid_batches.data)):
            return 1.0, 0.0
        shares = distributed.gather(predict_logits(self.model, self.valid_batches))

        def fit_and_store() -> tuple[float, float]:
            logits, labels = (torch.cat(parts) for parts in zip(*shares))
            temperature, bias = fit_calibration(logits, labels)
            runs.save_checkpoint(path, runs.Checkpoint(
                best.weights, {**best.meta, "temperature": temperature, "bias": bias}))
            return temperature, bias

        return distributed.on_main(fit_and_store)

    def test(self, diverged: int | None = None) -> dict[str, Any]:
        """Calibrate, then score the best checkpoint on the test split (refused if the prepared
        data changed since training started) and record it, with the epoch that diverged if
        one did."""
        self.data.check_unchanged()
        temperature, bias = self.calibrate()
        test_batches = Batches(self.data.split("test"), self.cfg.train.batch_size,
                               max_length=self.max_length, shard=self.world.size > 1,
                               pin=self.device.type == "cuda")
        test_loss, test_acc = evaluate(models.Calibrated(self.model, temperature, bias),
                                       test_batches, self.criterion, sync=self.world.size > 1)
        record = {"split": "test", "best_epoch": self.best_epoch,
                  "temperature": temperature, "bias": bias, "test_loss": test_loss,
                  "test_acc": test_acc, **({"diverged_epoch": diverged} if diverged else {})}
        if self.world.main:
            runs.append_metrics(self.run, record)
        return record


def fit(cfg: Config, data: Prepared, run: Path, reporter: Reporter, *, resume: bool = False,
        regions: tuple[torch.Tensor, torch.Tensor] | None = None) -> FitResult:
    """Train `cfg` on the prepared data into `run`, keeping `best` and `last` checkpoints, then
    test the best. With `resume`, continue from `last` (at its epoch boundary). An ensemble
    trains its members first (`fit_ensemble`). `regions`: region embeddings to take instead
    of learning them (`Trainer.learn_regions`)."""
    if cfg.model.name == "ensemble":
        return fit_ensemble(cfg, data, run, reporter, resume=resume)
    return Trainer(cfg, data, run, resume=resume, regions=regions).fit(reporter)


def _learned_regions(run: Path, cfg: Config) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The region embeddings (E, b) that a member of the ensemble at `run` has learned as
    `cfg`'s would be learned (`config.regions_recipe`), from its last checkpoint, or None."""
    wanted = configs.regions_recipe(cfg)
    if wanted is None:
        return None
    for member in runs.members(run):
        if ((member / runs.LAST).exists() and (member / runs.CONFIG).exists()
                and configs.regions_recipe(runs.load_config(member)) == wanted):
            return regions_of(member)
    return None


def regions_of(run: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The region embeddings (E, b) that a run learned, from its last checkpoint, for another
    model to take instead of learning its own (`fit(regions=...)`)."""
    weights = runs.load_checkpoint(run / runs.LAST).weights
    return weights["regions.table"], weights["regions.bias"]


def fit_ensemble(cfg: Config, data: Prepared, run: Path, reporter: Reporter, *,
                 resume: bool = False) -> FitResult:
    """Train each member recipe into `run/members/NAME` (a run of its own; with `resume`,
    finished members are kept and unfinished ones continued), fit the stacking weights on the
    validation split, then test the ensemble. Members whose region embeddings would be learned
    alike (`config.regions_recipe`) learn them once: the later take the earlier's."""
    names = configs.member_names(cfg)
    world = distributed.world()

    def plan() -> list[tuple[Path, Config, bool]]:
        todo = []  # every member recipe is loaded (and checked) before any training starts
        for ref, name in zip(cfg.model.members, names):
            member_run = runs.member_run(run, name)
            if resume and (member_run / runs.CONFIG).exists():
                if runs.tested(member_run):
                    runs.check_data(member_run, data, runs.recorded_fingerprint(member_run))
                    continue  # finished
                member_cfg = runs.load_config(member_run)  # as it started, not today's recipe
                member_cfg.train.device = cfg.train.device
                todo.append((member_run, member_cfg, False))
            else:
                member_cfg = configs.load_member(cfg, ref)
                member_cfg.train.world_size = world.size
                todo.append((member_run, member_cfg, True))
            check_precision(member_cfg, resolve_device(cfg.train.device, world.local_rank))
        return todo

    for member_run, member_cfg, fresh in distributed.on_main(plan):
        shared = None  # region embeddings an earlier member learned alike: learned once
        if fresh:
            shared = distributed.on_main(partial(_learned_regions, run, member_cfg))
            distributed.on_main(partial(runs.init_run, member_run, member_cfg, data.folder))
        fit(member_cfg, data, member_run, reporter, resume=not fresh, regions=shared)
    if not world.main:  # rank 0 fits the stacker and tests the ensemble alone
        return FitResult(run, 0, 0, {})

    device = resolve_device(cfg.train.device)
    vocab_size = data.tokenizer.get_vocab_size()
    if not len(data.split("valid")):
        raise UserError(f"{data.folder}: an ensemble fits its weights on the validation split, "
                        "which is empty")
    ensemble = _load_ensemble(run, runs.member_columns(run, names), vocab_size).to(device)
    member_logits, valid_labels = predict_logits(
        ensemble, Batches(data.split("valid"), cfg.train.batch_size), ensemble.member_logits)
    ensemble.fit_weights(member_logits, valid_labels)
    valid = classification_metrics(out_of_fold(member_logits, valid_labels, cfg.train.seed),
                                   valid_labels)
    record = {"members": ensemble.names, "weights": ensemble.weight.tolist(),
              "bias": ensemble.bias.item(), "valid_loss": valid["loss"],
              "valid_acc": valid["accuracy"]}
    runs.save_checkpoint(run / runs.BEST, runs.Checkpoint(
        {"weight": ensemble.weight.detach(), "bias": ensemble.bias.detach()},
        {"vocab_size": vocab_size, "model": "ensemble", "members": ensemble.names,
         "data_fingerprint": data.fingerprint, "metrics": record}))
    runs.append_metrics(run, record)
    data.check_unchanged()
    test_loss, test_acc = evaluate(ensemble, Batches(data.split("test"), cfg.train.batch_size),
                                   nn.BCEWithLogitsLoss())
    test_record = {"split": "test", "test_loss": test_loss, "test_acc": test_acc}
    runs.append_metrics(run, test_record)
    reporter.test(test_record)
    return FitResult(run, 0, 0, test_record)


def load_best(run: Path, cfg: Config, vocab_size: int, checkpoint: str = runs.BEST
              ) -> nn.Module:
    """A run's best model (or another of its checkpoints: a moving average's), ready to score:
    an ensemble with its members from run/members."""
    path = run / checkpoint
    if not path.exists() and runs.has_progress(run) and not runs.tested(run):  # stopped among
        # an ensemble's members; a finished run that lost its best is told it is missing
        raise UserError(f"{run} has not finished training: it has no best model yet; "
                        f"resume it with imdbsent train --resume {run}")
    ckpt = runs.load_checkpoint(path)
    if cfg.model.name != "ensemble":
        model = load_model(cfg, ckpt, path, vocab_size)
        temperature = ckpt.meta.get("temperature")
        return (models.Calibrated(model, temperature, ckpt.meta.get("bias", 0.0))
                if temperature else model)
    if not ckpt.meta.get("members"):
        raise UserError(f"{path}: not an ensemble's checkpoint (it names no members)")
    ensemble = _load_ensemble(run, ckpt.meta["members"], vocab_size)
    try:
        with torch.no_grad():
            ensemble.weight.copy_(ckpt.weights["weight"])
            ensemble.bias.copy_(ckpt.weights["bias"])
    except (KeyError, RuntimeError):
        raise UserError(f"{path}: weights do not fit the ensemble's members") from None
    return ensemble


def _load_ensemble(run: Path, columns: list[str], vocab_size: int) -> models.Ensemble:
    """An ensemble of the models behind its stacked inputs (`runs.member_checkpoint`)."""
    members, limits = [], []
    for column in columns:
        path = runs.member_checkpoint(run, column)
        member_run = runs.check_run(path.parent)
        member_cfg = runs.load_config(member_run)
        members.append(load_best(member_run, member_cfg, vocab_size, path.name))
        limits.append(member_cfg.train.max_length)
    return models.Ensemble(members, limits, columns)


def load_model(cfg: Config, ckpt: runs.Checkpoint, where: Path, vocab_size: int) -> nn.Module:
    """Build the configured model for a vocabulary and load a checkpoint into it."""
    if ckpt.meta.get("vocab_size") != vocab_size:
        raise UserError(f"{where}: checkpoint has a vocabulary of {ckpt.meta.get('vocab_size')} "
                        f"ids but the tokenizer has {vocab_size}; they do not belong together")
    if cfg.model.ngram_buckets and ckpt.meta.get("ngram_hash") != models.NGRAM_HASH:
        raise UserError(f"{where}: trained with an older n-gram hash than this imdbsent uses; "
                        "train the run again")
    if ckpt.meta.get("model", cfg.model.name) != cfg.model.name:
        raise UserError(f"{where}: a checkpoint of a {ckpt.meta['model']} model, but the run's "
                        f"config.toml says {cfg.model.name}")
    model = models.build(cfg.model, vocab_size)
    _load_weights(model, ckpt, where)
    return model


def _load_weights(model: nn.Module, ckpt: runs.Checkpoint, where: Path) -> None:
    try:
        model.load_state_dict(ckpt.weights)
    except RuntimeError as exc:
        first = next((line.strip() for line in str(exc).splitlines()[1:] if line.strip()),
                     str(exc))  # the first mismatch, not torch's header line that ends in ":"
        raise UserError(f"{where}: weights do not fit the configured model "
                        f"({_clipped(first.rstrip('.'))})") from None


def _clipped(line: str, limit: int = 300) -> str:
    """torch's line whole, unless it lists more than `limit` characters of quoted keys (every
    missing key: hundreds for another model's checkpoint): then up to the last whole key in
    them. A size mismatch, whose shapes hold commas too, is never cut."""
    cut = line.rfind(', "', 0, limit)
    return line if len(line) <= limit or cut < 0 else line[:cut] + ", ..."


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
