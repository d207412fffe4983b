"""Properties of ftlib.predict_texts: probabilities are the model's softmax, independent of batching, in eval
mode, with the task's label names; bad inputs name the fix."""

from __future__ import annotations

import pytest
import torch
from test_task import NAMES, save_tiny_model

import ftlib
from ftlib.models import build_classifier
from ftlib.predict import predict_texts

TEXTS = ["the movie was good", "a dull plot", "it", "great great great good nice movie", "bad"]


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    model, tokenizer = build_classifier(str(save_tiny_model(tmp_path_factory.mktemp("tiny"))), num_labels=3)
    torch.manual_seed(0)
    torch.nn.init.normal_(model.classifier.weight, std=1.0)  # confident, distinct outputs
    return model, tokenizer


def test_probabilities_are_the_models_softmax(classifier):
    model, tokenizer = classifier
    out = predict_texts(model, tokenizer, TEXTS, label_names=NAMES)
    model.eval()
    with torch.no_grad():
        for p, text in zip(out, TEXTS, strict=True):
            enc = tokenizer([text], return_tensors="pt")
            expected = model(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]).softmax(-1)[0]
            assert list(p.probabilities) == list(NAMES)
            assert torch.allclose(torch.tensor(list(p.probabilities.values())), expected, atol=1e-5)
            assert p.label_id == int(expected.argmax()) and p.label == NAMES[p.label_id]
            assert p.probability == max(p.probabilities.values()) and p.text == text
            assert sum(p.probabilities.values()) == pytest.approx(1.0, abs=1e-5)


def test_batching_and_mode_do_not_change_predictions(classifier):
    model, tokenizer = classifier
    model.train()
    one = predict_texts(model, tokenizer, TEXTS, batch_size=1)
    assert model.training  # the caller's mode is restored
    many = predict_texts(model, tokenizer, TEXTS, batch_size=32)  # padding within a batch changes nothing
    for a, b in zip(one, many, strict=True):
        assert a.label_id == b.label_id
        assert a.probability == pytest.approx(b.probability, abs=1e-5)
    assert [p.label for p in one] == [str(p.label_id) for p in one]  # no names: "0".."C-1"


def test_exported_from_the_package():
    assert ftlib.predict_texts is predict_texts
    assert {"split_dataset", "save_task", "load_task", "from_csv", "build_classifier"} <= set(ftlib.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ftlib.nope  # noqa: B018


@pytest.mark.parametrize("texts, kwargs, error, message", [
    ("one text", {}, TypeError, r"texts is a single string .*pass a list, e\.g\. \['one text'\]"),
    ([], {}, ValueError, r"texts is empty; pass at least one text"),
    (["ok", 3], {}, TypeError, r"text 1 is int, not str"),
    (["ok"], {"batch_size": 0}, ValueError, r"batch_size must be a positive int"),
    (["ok"], {"label_names": ["a", "b"]}, ValueError, r"2 label_names for a 3-class model; give one name per class"),
    (["ok"], {"max_length": 1000}, ValueError, r"max_length=1000 exceeds the 64 positions"),
])
def test_bad_inputs_name_the_fix(classifier, texts, kwargs, error, message):
    model, tokenizer = classifier
    with pytest.raises(error, match=message):
        predict_texts(model, tokenizer, texts, **kwargs)
