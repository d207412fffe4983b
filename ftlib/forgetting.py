"""How much of what the encoder knew survives fine-tuning, measured two ways.

1. Retention probe: a linear probe (multinomial logistic regression on frozen sentence features) on a
   second task, TREC-6 question types, trained and tested on the encoder before and after fine-tuning.
   Forgetting = probe accuracy before - after (Kirkpatrick et al. 2017 frame it; probes: Alain & Bengio 2016).
2. Representation drift: 1 - linear CKA (Kornblith et al. 2019) between the original and the fine-tuned
   encoder's sentence representations of the same held-out texts. No labels needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .data import TextDataset, load_trec, make_loader, stratified_split, take_stratified
from .device import autocast


@torch.no_grad()
def sentence_features(model: nn.Module, texts_or_ds, tokenizer, max_length: int = 64, batch_size: int = 64,
                      device: torch.device | str = "cpu") -> torch.Tensor:
    """Pooled features (N, H) in eval mode, in input order (float32, on the CPU)."""
    ds = texts_or_ds if isinstance(texts_or_ds, TextDataset) else \
        TextDataset(tuple(texts_or_ds), (0,) * len(texts_or_ds), ("none",), "texts")
    was_training = model.training
    model.eval()
    out = []
    for batch in make_loader(ds, tokenizer, batch_size, max_length):
        inputs = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        with autocast(device):
            out.append(model.features(**inputs).float().cpu())  # (B, H)
    model.train(was_training)
    return torch.cat(out)


def linear_probe_predictions(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                             l2: float = 1e-3, max_iter: int = 200, num_classes: int | None = None) -> torch.Tensor:
    """Fit softmax regression with L-BFGS on standardised features; predicted classes of test_x (deterministic)."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    xtr, xte = (train_x - mean) / std, (test_x - mean) / std  # (N, H)
    classes = num_classes or int(train_y.max()) + 1
    w = torch.zeros(xtr.shape[1], classes, requires_grad=True)  # (H, C)
    b = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(xtr @ w + b, train_y) + l2 * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return (xte @ w + b).argmax(-1)  # (N_test,)


def linear_probe_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                          test_y: torch.Tensor, l2: float = 1e-3, max_iter: int = 200) -> float:
    """Accuracy of linear_probe_predictions on (test_x, test_y)."""
    classes = int(max(train_y.max(), test_y.max())) + 1
    pred = linear_probe_predictions(train_x, train_y, test_x, l2, max_iter, num_classes=classes)
    return (pred == test_y).float().mean().item()


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA between two representations of the same N inputs, (N, H1) and (N, H2); 1 = same geometry."""
    x = (x - x.mean(0)).double()
    y = (y - y.mean(0)).double()
    cross = (y.T @ x).norm() ** 2  # ||Y^T X||_F^2
    return (cross / ((x.T @ x).norm() * (y.T @ y).norm())).item()


@dataclass
class RetentionProbe:
    """Everything measured once on the original encoder, to compare each fine-tuned encoder against."""

    trec_train: TextDataset
    trec_test: TextDataset
    drift_texts: tuple[str, ...]
    max_length: int
    base_accuracy: float = float("nan")
    base_drift_features: torch.Tensor | None = None
    base_correct: list[bool] | None = None  # per TREC test question: right before fine-tuning (paired tests)

    @classmethod
    def build(cls, model, tokenizer, drift_texts, n_train: int | None = 1000, n_test: int | None = 500,
              max_length: int = 64, device="cpu") -> RetentionProbe:
        """Split TREC, fit the probe on the untouched encoder, and keep its drift features."""
        split = stratified_split(load_trec(), (0.8, 0.2), ("train", "test"))
        probe = cls(take_stratified(split["train"], n_train), take_stratified(split["test"], n_test),
                    tuple(drift_texts), max_length)
        probe.base_correct, probe.base_drift_features = probe._measure(model, tokenizer, device)
        probe.base_accuracy = sum(probe.base_correct) / len(probe.base_correct)
        return probe

    def _measure(self, model, tokenizer, device) -> tuple[list[bool], torch.Tensor]:
        feats = [sentence_features(model, ds, tokenizer, self.max_length, device=device)
                 for ds in (self.trec_train, self.trec_test)]
        labels = torch.tensor(self.trec_test.labels)
        pred = linear_probe_predictions(feats[0], torch.tensor(self.trec_train.labels), feats[1],
                                        num_classes=self.trec_train.num_labels)
        return (pred == labels).tolist(), sentence_features(model, self.drift_texts, tokenizer, self.max_length,
                                                            device=device)

    def measure(self, model, tokenizer, device="cpu", correct: bool = False) -> dict:
        """probe accuracy after, forgetting (drop in probe accuracy) and drift (1 - CKA) for a tuned model;
        correct=True adds `probe_correct`, right or wrong per TREC test question (for paired tests)."""
        right, feats = self._measure(model, tokenizer, device)
        acc = sum(right) / len(right)
        drift = 1.0 - linear_cka(self.base_drift_features, feats)
        out = {"probe_accuracy": acc, "forgetting": self.base_accuracy - acc, "drift": drift}
        return {**out, "probe_correct": right} if correct else out
