"""Whether a training run learned: a loss that is no longer a number stops the run with a
clear error, and a run whose last epoch predicts no better than the label frequencies
(a network whose ReLUs all died: its output no longer depends on the image) is reported.

Both happen without any error from PyTorch: a learning rate too high for a network
without normalization diverges to NaN, or collapses every unit below zero, and the run
ends with a model at chance accuracy that every later merge, curve and figure would use
as if it were trained.
"""

from __future__ import annotations

import contextlib
import math
import threading
import warnings
from collections.abc import Iterator, Sequence

import torch

__all__ = ["DidNotLearnWarning", "LastEpoch", "check_loss", "collected", "report"]

# nats: a last epoch within this of the label entropy learned nothing beyond the frequencies
CHANCE_MARGIN = 0.02


class DidNotLearnWarning(UserWarning):
    """A training run ended predicting no better than its labels' frequencies."""


_collecting = threading.local()


@contextlib.contextmanager
def collected() -> Iterator[list[str]]:
    """Within the block, this thread's runs that did not learn are listed in the yielded
    list instead of warned about: a job hands them to the caller, whom a worker's warning
    would not reach (``warnings.catch_warnings`` is not safe in threads)."""
    outer = getattr(_collecting, "messages", None)
    _collecting.messages = found = []
    try:
        yield found
    finally:
        _collecting.messages = outer


def check_loss(loss: float, step: int, lr: float) -> None:
    """Raise where a training step's ``loss`` is not finite (the weights diverged)."""
    if not math.isfinite(loss):
        raise FloatingPointError(
            f"The training loss became {loss} at step {step} (learning rate {lr:.3g} at that "
            "step): the weights diverged. Lower lr (the peak of the one-cycle schedule) or "
            "add normalization; check the data for non-finite values."
        )


def report(messages: Sequence[str]) -> None:
    """Warn again, in the caller, each message a job collected (:func:`collected`) where
    a run did not learn; also when the job's result comes from the cache."""
    for message in messages:
        warnings.warn(message, DidNotLearnWarning, stacklevel=3)


class LastEpoch:
    """The mean loss of one epoch and the entropy of its labels' frequencies (the loss of
    the best prediction that ignores the image)."""

    def __init__(self) -> None:
        self.total, self.count = 0.0, 0
        self.labels = torch.zeros(0, dtype=torch.long)

    def add(self, loss: float, labels: torch.Tensor) -> None:
        """One batch's mean ``loss`` over its ``labels``."""
        counts = torch.bincount(labels.detach().cpu().long().flatten())
        if len(counts) > len(self.labels):
            counts[: len(self.labels)] += self.labels
            self.labels = counts
        else:
            self.labels[: len(counts)] += counts
        self.total += loss * labels.numel()
        self.count += labels.numel()

    def check(self, what: str, lr: float) -> None:
        """Warn (:class:`DidNotLearnWarning`; listed instead within :func:`collected`)
        where the epoch's mean loss is within :data:`CHANCE_MARGIN` of the labels'
        entropy."""
        if self.count == 0:
            return
        p = self.labels[self.labels > 0].double() / self.count
        entropy = float(-(p * p.log()).sum())
        loss = self.total / self.count
        if loss < entropy - CHANCE_MARGIN:
            return
        message = (
            f"{what} did not learn: its last epoch's mean training loss {loss:.3f} is that "
            f"of predicting the label frequencies ({entropy:.3f}), so the model is at "
            "chance: too few steps, labels it cannot learn, or a learning rate so high that "
            "its ReLUs all died (its output is then the same for every image). Train it "
            f"longer, with a lower lr (was {lr:g}), another seed or normalization before "
            "merging or comparing it."
        )
        messages = getattr(_collecting, "messages", None)
        if messages is not None:
            messages.append(message)
        else:
            warnings.warn(message, DidNotLearnWarning, stacklevel=4)
