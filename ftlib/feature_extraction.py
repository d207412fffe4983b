"""Feature extraction: a frozen encoder, a trained head.

The reference text wraps the encoder in torch.no_grad() but leaves it in train mode, so dropout keeps
perturbing the "frozen" features: every epoch sees different features and no caching is possible.
Here the encoder is frozen *and* held in eval mode, so its features are a pure function of the text;
`fit` then computes them once and trains the head on the cache in every later epoch.
"""

from __future__ import annotations

from torch import nn

from .lifecycle import prepare
from .params import freeze_except
from .strategy_tag import tag_strategy


def apply_feature_extraction(model: nn.Module) -> nn.Module:
    """Freeze the encoder and keep it in eval mode (no dropout); only the head trains."""
    if not hasattr(model, "encoder") or not hasattr(model, "classifier"):
        raise TypeError(f"feature extraction needs a model with .encoder and .classifier (a SequenceClassifier), "
                        f"got {type(model).__name__}")
    prepare(model, "feature-extraction")  # over LoRA, a prefix or adapters: refused, naming the fix
    freeze_except(model, lambda name: False)  # only classifier.* keeps requires_grad
    model.keep_encoder_eval = True
    model.encoder.eval()
    return tag_strategy(model, "feature-extraction")
