"""A small network that learns distress while unlearning which corpus and which speaker it hears.

The SVM on eGeMAPS learns whatever separates distress in its training corpora, including what
only those corpora share: their languages, rooms and actors. Domain-adversarial training (Ganin
and Lempitsky's gradient reversal) adds two heads to a shared encoder, one guessing the corpus and
one the speaker, and reverses their gradients into the encoder, so the features it keeps are the
ones from which neither can be told while distress still can.

It is a scikit-learn classifier (``decision_function`` gives log-odds) so the training procedure
can use it wherever it uses the SVM (``TrainConfig(classifier="adversarial")``). ``fit`` takes the
speakers as ``groups``; a group written ``corpus:speaker`` (as pooled training names them) also
gives the corpus. torch is imported only when one is fitted or used.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin


class AdversarialMLP(ClassifierMixin, BaseEstimator):  # type: ignore[misc]
    """Encoder (two layers of ``hidden`` units), a distress head, and reversed corpus and speaker heads."""

    # the training procedure passes the speakers as ``groups`` to the fit of any estimator that says so
    fit_requires_groups: ClassVar[bool] = True

    def __init__(
        self,
        hidden: int = 64,
        adversary: float = 0.3,
        weight_decay: float = 1e-3,
        epochs: int = 40,
        batch_size: int = 128,
        learning_rate: float = 2e-3,
        random_state: int = 0,
    ) -> None:
        self.hidden = hidden
        self.adversary = adversary
        self.weight_decay = weight_decay
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.random_state = random_state

    def fit(
        self,
        X: np.ndarray,
        y: np.ndarray,
        groups: np.ndarray | None = None,
        sample_weight: np.ndarray | None = None,
    ) -> AdversarialMLP:
        import torch
        from torch import nn

        X = np.asarray(X, dtype=np.float32)
        y = np.asarray(y)
        self.classes_ = np.unique(y)
        if len(self.classes_) != 2:
            raise ValueError("AdversarialMLP is a binary classifier")
        speakers = np.asarray(groups if groups is not None else np.zeros(len(y)), dtype=str)
        corpora = np.array([s.split(":", 1)[0] if ":" in s else "" for s in speakers])
        _, speaker_ids = np.unique(speakers, return_inverse=True)
        _, corpus_ids = np.unique(corpora, return_inverse=True)
        weight = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)

        torch.manual_seed(self.random_state)
        rng = np.random.default_rng(self.random_state)
        dim = X.shape[1]
        self.encoder_ = nn.Sequential(
            nn.Linear(dim, self.hidden), nn.ReLU(), nn.Dropout(0.2), nn.Linear(self.hidden, self.hidden), nn.ReLU()
        )
        self.head_ = nn.Linear(self.hidden, 1)
        corpus_head = nn.Linear(self.hidden, int(corpus_ids.max()) + 1)
        speaker_head = nn.Linear(self.hidden, int(speaker_ids.max()) + 1)
        params = [*self.encoder_.parameters(), *self.head_.parameters()]
        params += [*corpus_head.parameters(), *speaker_head.parameters()]
        optimiser = torch.optim.AdamW(params, lr=self.learning_rate, weight_decay=self.weight_decay)
        tensors = (
            torch.from_numpy(X),
            torch.from_numpy((y == self.classes_[1]).astype(np.float32)),
            torch.from_numpy(corpus_ids.astype(np.int64)),
            torch.from_numpy(speaker_ids.astype(np.int64)),
            torch.from_numpy((weight / weight.mean()).astype(np.float32)),
        )
        bce = nn.BCEWithLogitsLoss(reduction="none")
        ce = nn.CrossEntropyLoss(reduction="none")
        with _one_thread():
            self.encoder_.train()
            for _ in range(self.epochs):
                for rows in np.array_split(rng.permutation(len(y)), max(1, len(y) // self.batch_size)):
                    xb, yb, cb, sb, wb = (t[torch.from_numpy(rows)] for t in tensors)
                    z = self.encoder_(xb)
                    reversed_z = _reverse(z, self.adversary)
                    loss = bce(self.head_(z).squeeze(1), yb)
                    loss = loss + ce(corpus_head(reversed_z), cb) + ce(speaker_head(reversed_z), sb)
                    optimiser.zero_grad()
                    (loss * wb).mean().backward()
                    optimiser.step()
            self.encoder_.eval()
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        import torch

        with _one_thread(), torch.no_grad():
            z = self.encoder_(torch.from_numpy(np.asarray(X, dtype=np.float32)))
            out: np.ndarray = self.head_(z).squeeze(1).numpy().astype(np.float64)
        return out

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(self.classes_[(self.decision_function(X) > 0).astype(int)])


def _reverse(z: Any, scale: float) -> Any:
    """``z`` going forward; its gradient multiplied by ``-scale`` going back (gradient reversal)."""
    return z * (-scale) + (z * (1.0 + scale)).detach()


class _one_thread:
    """torch on one intra-op thread while fitting or scoring (the network is tiny; threads only wait)."""

    def __enter__(self) -> None:
        import torch

        self._before = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc: object) -> None:
        import torch

        torch.set_num_threads(self._before)
