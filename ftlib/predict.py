"""Labels and probabilities for raw texts: what a trained classifier is for."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .data import as_list, check_max_length, max_positions
from .device import autocast
from .train import MODEL_INPUTS


@dataclass(frozen=True)
class Prediction:
    text: str
    label: str  # the most probable class's name
    label_id: int
    probability: float  # of that class
    probabilities: dict[str, float]  # every class, in label-id order


@torch.no_grad()
def predict_texts(model: nn.Module, tokenizer, texts: Sequence[str], *, label_names: Sequence[str] | None = None,
                  batch_size: int = 32, max_length: int | None = None) -> list[Prediction]:
    """Classify `texts` in eval mode (no dropout), in batches, on the model's device; the mode is restored.

    label_names defaults to model.label_names (set by ftlib.task.load_task), else "0".."C-1"; max_length
    to the longest input the model takes."""
    texts = as_list(texts, "texts")
    if not texts:
        raise ValueError("texts is empty; pass at least one text")
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise TypeError(f"text {bad} is {type(texts[bad]).__name__}, not str: {texts[bad]!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    num_labels = getattr(model, "num_labels", None)
    names = tuple(label_names or getattr(model, "label_names", None) or (str(c) for c in range(num_labels or 0)))
    if num_labels is not None and len(names) != num_labels:
        raise ValueError(f"{len(names)} label_names for a {num_labels}-class model; give one name per class")
    max_length = check_max_length(max_length or max_positions(model, tokenizer) or 512, tokenizer, model)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    try:
        for i in range(0, len(texts), batch_size):
            chunk = texts[i:i + batch_size]
            enc = tokenizer(chunk, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            inputs = {k: enc[k].to(device) for k in MODEL_INPUTS if k in enc}
            with autocast(device):
                probs = model(**inputs).float().softmax(-1).cpu()  # (B, C)
            names = names or tuple(str(c) for c in range(probs.shape[-1]))
            for text, p in zip(chunk, probs, strict=True):
                k = int(p.argmax())
                out.append(Prediction(text, names[k], k, float(p[k]), dict(zip(names, map(float, p), strict=True))))
    finally:
        model.train(was_training)
    return out
