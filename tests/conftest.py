"""Tiny BERT and RoBERTa models built in the test (no download), a fixed padded batch, and the embedded
MiniLM loaded once per test process (the `minilm` fixture hands out deep copies)."""

from __future__ import annotations

import copy
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network; hub names fail fast

import pytest  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402
from transformers import BertConfig, BertModel, RobertaConfig, RobertaModel

from ftlib.models import SequenceClassifier

TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=37, max_position_embeddings=64)
ARCHS = ("bert", "roberta")
# Tiny models are dominated by thread hand-offs: one thread runs them ~100x faster on a busy 2-core box.
torch.set_num_threads(1)


def make_encoder(arch: str = "bert", attn_implementation: str | None = None, seed: int = 0, **overrides):
    """A randomly initialised 2-layer encoder of hidden size 32; same seed -> same weights."""
    torch.manual_seed(seed)
    cfg_cls, model_cls = {"bert": (BertConfig, BertModel), "roberta": (RobertaConfig, RobertaModel)}[arch]
    extra = {"pad_token_id": 1} if arch == "roberta" else {}
    config = cfg_cls(**{**TINY, **extra, **overrides})
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
    return model_cls(config, add_pooling_layer=False)


def make_model(arch: str = "bert", num_labels: int = 3, seed: int = 0, **kwargs) -> SequenceClassifier:
    """A tiny SequenceClassifier, in eval mode so forward passes are deterministic."""
    model = SequenceClassifier(make_encoder(arch, seed=seed, **kwargs), num_labels)
    torch.manual_seed(seed + 1)
    model.classifier.reset_parameters()
    return model.eval()


def make_batch(batch_size: int = 4, seq_len: int = 9, vocab_size: int = 99, seed: int = 0) -> dict:
    """input_ids / attention_mask / labels with real padding: row i has i trailing pad tokens."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, vocab_size, (batch_size, seq_len), generator=g)
    attention_mask = torch.ones(batch_size, seq_len, dtype=torch.long)
    for i in range(batch_size):
        if i:
            attention_mask[i, -i:] = 0
            input_ids[i, -i:] = 1  # pad id (RoBERTa's; BERT ignores it thanks to the mask)
    labels = torch.arange(batch_size) % 3
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


@pytest.fixture(autouse=True)
def _no_profile_from_the_environment(monkeypatch):
    """`make test` sets FTLIB_PROFILE=smoke for the notebooks; library tests see the default profile."""
    monkeypatch.delenv("FTLIB_PROFILE", raising=False)


@pytest.fixture(scope="session")
def _minilm_once():
    """The embedded MiniLM classifier and tokenizer, loaded once per test process; never hand it out."""
    from ftlib.models import build_classifier

    return build_classifier()


@pytest.fixture
def minilm(_minilm_once):
    """(SequenceClassifier, tokenizer): a fresh deep copy of build_classifier() for each test, in train mode."""
    model, tokenizer = _minilm_once
    return copy.deepcopy(model), copy.deepcopy(tokenizer)


@pytest.fixture(params=ARCHS)
def arch(request) -> str:
    return request.param


@pytest.fixture
def batch() -> dict:
    return make_batch()


class Rows(Dataset):
    """n tiny labelled sequences as dicts; labels follow the first token, 'index' feeds the feature cache."""

    def __init__(self, n: int, seq_len: int = 8, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(3, TINY["vocab_size"], (n, seq_len), generator=g)
        lengths = torch.randint(3, seq_len + 1, (n,), generator=g)
        self.mask = (torch.arange(seq_len) < lengths[:, None]).long()
        self.ids[self.mask == 0] = 1  # pad id
        self.labels = self.ids[:, 0] % 3  # learnable from the first token

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i], "labels": self.labels[i], "index": i}


def rows_loader(n: int = 8, batch_size: int = 4) -> DataLoader:
    """fit needs loader.dataset and loader.batch_size: a plain DataLoader over Rows has both."""
    return DataLoader(Rows(n), batch_size=batch_size)


def block_of(name: str) -> str:
    """Which block (embeddings, layer.i, head) a SequenceClassifier parameter belongs to, from its name."""
    if name.startswith("encoder.embeddings."):
        return "embeddings"
    if name.startswith("encoder.encoder.layer."):
        return f"layer.{name.split('.')[3]}"
    return "head"


def pytest_collection_modifyitems(config, items):
    """Notebooks first, last chapter first, then the library tests: under xdist (`make test`) the longest
    items (chapter 08 runs the whole comparison) start at once and the many short test files fill the gaps.
    The sort is stable, so each notebook's cells keep their order; `--no-loadscope-reorder` keeps this one."""
    notebooks = sorted({item.path for item in items if item.path.suffix == ".ipynb"}, reverse=True)
    rank = {path: i for i, path in enumerate(notebooks)}
    items.sort(key=lambda item: rank.get(item.path, len(rank)))


def fails_quietly(call, *secrets):
    """An exercise check given a wrong answer (call() runs it) fails, and its hint names none of the secrets."""
    with pytest.raises(AssertionError) as info:
        call()
    for secret in secrets:
        shown = {str(secret), f"{secret:,}"} if isinstance(secret, int) and not isinstance(secret, bool) else {str(secret)}
        assert not any(s in str(info.value) for s in shown), f"the hint reveals {secret}"
    return info.value
