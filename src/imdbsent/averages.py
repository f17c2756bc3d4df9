"""Exponential moving averages of a model's weights as it trains (`train.averages`).

Each is torch's `AveragedModel`, updated after every optimizer step (its buffers too: the
region embeddings of a model that has them), validated after every epoch and kept at its best
validation loss. Alone an average scores no better than the model; two, stacked by an ensemble
as inputs of their own in the model's place, gained on every seed measured
(benchmarks/notes.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from imdbsent import runs
from imdbsent.errors import UserError

Weights = dict[str, torch.Tensor]


class Averages:
    """One moving average of `model`'s weights per decay, by the decay's `runs.average_name`,
    updated after each step of `optimizer`, with the best validation loss each has had."""

    def __init__(self, model: nn.Module, decays: list[float],
                 optimizer: torch.optim.Optimizer) -> None:
        self.model = model
        self.models = {runs.average_name(d): AveragedModel(
            model, multi_avg_fn=get_ema_multi_avg_fn(d), use_buffers=True) for d in decays}
        self.best = {name: math.inf for name in self.models}
        if self.models:
            optimizer.register_step_post_hook(self._update)

    def _update(self, *_: Any) -> None:
        for average in self.models.values():
            average.update_parameters(self.model)

    def validate(self, evaluate: Callable[[nn.Module], tuple[float, float]]
                 ) -> dict[str, dict[str, Any]]:
        """Each average's validation loss and accuracy (`evaluate` of its model), and whether
        the loss is its best yet (then kept as its best)."""
        records = {}
        for name, average in self.models.items():
            loss, acc = evaluate(average.module)
            improved = loss < self.best[name]
            if improved:
                self.best[name] = loss
            records[name] = {"valid_loss": loss, "valid_acc": acc, "best": improved}
        return records

    def weights(self, name: str) -> Weights:
        """The averaged model's weights, as the model's own state_dict names them."""
        return self.models[name].module.state_dict()

    def state(self) -> dict[str, Weights]:
        """Everything to continue the averages (`restore`): each AveragedModel's state."""
        return {name: average.state_dict() for name, average in self.models.items()}

    def restore(self, state: dict[str, Weights] | None, best: dict[str, float] | None,
                where: Path) -> None:
        """Continue the averages that `state` and their `best` losses held (a `last`
        checkpoint at `where`)."""
        for name, average in self.models.items():
            if name not in (state or {}) or name not in (best or {}):
                raise UserError(f"{where}: holds no moving average of decay {name}, which the "
                                "run's config keeps; it cannot be resumed")
            try:
                average.load_state_dict(state[name])
            except RuntimeError:
                raise UserError(f"{where}: its moving average of decay {name} does not fit the "
                                "configured model; it cannot be resumed") from None
            self.best[name] = best[name]
