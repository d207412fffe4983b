"""Prompt tuning on tiny BERT/RoBERTa (and MiniLM, slow): PEFT parity, padding invariance, what is pooled."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY, make_model

from ftlib.feature_extraction import apply_feature_extraction
from ftlib.lora import apply_lora
from ftlib.params import count_parameters, trainable_names
from ftlib.prompt_tuning import (
    PromptTuningConfig,
    apply_prompt_tuning,
    load_prompt_tuning,
    prompt_disabled,
    remove_prompt_tuning,
    save_prompt_tuning,
)

H, L, C, P = TINY["hidden_size"], TINY["num_hidden_layers"], 3, 5
peft = pytest.importorskip("peft")


def prompted(arch: str = "bert", seed: int = 0, **kwargs):
    model = make_model(arch)
    torch.manual_seed(seed)
    return apply_prompt_tuning(model, **{"num_tokens": P, **kwargs})


def logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(batch["input_ids"], batch["attention_mask"])


def hidden(encoder, batch, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **kwargs)


def check_parity(base, batch, P: int) -> int:
    """Same encoder, our prompt copied into PEFT's: the real tokens' hidden states are equal."""
    theirs = peft.get_peft_model(copy.deepcopy(base.encoder), peft.PromptTuningConfig(
        task_type="FEATURE_EXTRACTION", num_virtual_tokens=P)).eval()
    model = apply_prompt_tuning(copy.deepcopy(base), num_tokens=P)
    with torch.no_grad():
        theirs.prompt_encoder.default.embedding.weight.copy_(model.prompt_encoder.prompt_embeddings)
    ours, full = hidden(model.encoder, batch).last_hidden_state, hidden(theirs, batch).last_hidden_state
    B, T = batch["input_ids"].shape
    assert ours.shape == (B, T, base.config.hidden_size) and full.shape == (B, P + T, base.config.hidden_size)
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(ours[real], full[:, P:][real], atol=1e-5, rtol=0)
    assert (ours - hidden(base.encoder, batch).last_hidden_state)[real].abs().max() > 1e-3  # the prompt acts
    return count_parameters(theirs).trainable


def test_parity_with_peft_feature_extraction(arch, batch):
    assert check_parity(make_model(arch), batch, P) == P * H


def test_count_and_what_trains(arch):
    model = prompted(arch)
    assert count_parameters(model).trainable == P * H + H * C + C
    assert count_parameters(model).total == count_parameters(make_model(arch)).total + P * H
    assert set(trainable_names(model)) == {"prompt_encoder.prompt_embeddings", "classifier.weight", "classifier.bias"}


def test_pooled_features_ignore_padding(arch):
    """A sentence alone and the same sentence padded with 6 extra pad tokens: the same pooled features."""
    model = prompted(arch)
    ids = torch.randint(3, TINY["vocab_size"], (1, 7), generator=torch.Generator().manual_seed(0))
    padded = torch.cat([ids, torch.ones(1, 6, dtype=torch.long)], 1)  # pad id 1
    mask = torch.cat([torch.ones(1, 7), torch.zeros(1, 6)], 1).long()
    with torch.no_grad():
        alone, with_pad = model.features(ids), model.features(padded, mask)
    torch.testing.assert_close(with_pad, alone, atol=1e-5, rtol=0)


def test_cls_pooling_pools_the_real_cls_not_a_prompt_position(batch):
    model = prompted("bert")
    model.pooling = "cls"
    seen = []
    model.encoder.encoder.register_forward_hook(lambda m, a, out: seen.append(out.last_hidden_state))
    with torch.no_grad():
        feats = model.features(batch["input_ids"], batch["attention_mask"])
    inside = seen[0]  # (B, P+T, H): the layers do see the prompt in front
    assert inside.shape[1] == P + batch["input_ids"].shape[1]
    torch.testing.assert_close(feats, inside[:, P], atol=0, rtol=0)  # position P: the real [CLS]


def test_disabled_and_removed_equal_the_original(arch, batch):
    expected = logits(make_model(arch), batch)
    model = prompted(arch)
    active = logits(model, batch)
    assert (active - expected).abs().max() > 1e-3
    with prompt_disabled(model):
        torch.testing.assert_close(logits(model, batch), expected, atol=0, rtol=0)
    assert torch.equal(logits(model, batch), active)
    remove_prompt_tuning(model)
    assert not hasattr(model, "prompt_encoder") and not model.encoder._forward_pre_hooks
    torch.testing.assert_close(logits(model, batch), expected, atol=0, rtol=0)


def test_gradient_reaches_only_prompt_and_head(arch, batch):
    model = prompted(arch)
    F.cross_entropy(model(batch["input_ids"], batch["attention_mask"]), batch["labels"]).backward()
    got = {n for n, p in model.named_parameters() if p.grad is not None}
    assert got == set(trainable_names(model))
    assert model.prompt_encoder.prompt_embeddings.grad.abs().min() > 0  # every prompt value gets a gradient


def test_inits():
    model = make_model()
    words = model.encoder.get_input_embeddings().weight
    torch.manual_seed(0)
    vocab = apply_prompt_tuning(copy.deepcopy(model), num_tokens=P, init="vocab").prompt_encoder.prompt_embeddings
    assert all(any(torch.equal(row, w) for w in words) for row in vocab)

    def tokenizer(text):  # a stand-in: the tiny model has no tokenizer
        return {"input_ids": [5, 6, 7] if text == "abc" else [9]}

    text = apply_prompt_tuning(copy.deepcopy(model), num_tokens=P, init="text", text="abc", tokenizer=tokenizer)
    torch.testing.assert_close(text.prompt_encoder.prompt_embeddings, words[[5, 6, 7, 5, 6]], atol=0, rtol=0)
    torch.manual_seed(0)
    big = apply_prompt_tuning(copy.deepcopy(model), num_tokens=64 - 1).prompt_encoder.prompt_embeddings
    assert big.std().item() == pytest.approx(words.std().item(), rel=0.2)  # random: at the words' scale


def test_save_load_round_trip(arch, batch, tmp_path):
    model = prompted(arch, seed=0)
    path = save_prompt_tuning(model, tmp_path / "prompt.safetensors")
    fresh = prompted(arch, seed=1)
    assert not torch.equal(logits(fresh, batch), logits(model, batch))
    assert torch.equal(logits(load_prompt_tuning(fresh, path), batch), logits(model, batch))
    with pytest.raises(ValueError, match=r"apply_prompt_tuning\(model, num_tokens=5\) first"):
        load_prompt_tuning(prompted(arch, num_tokens=4), path)


def test_deepcopy_gets_its_own_prompt(batch):
    model = prompted()
    clone = copy.deepcopy(model)
    expected = logits(model, batch)
    with torch.no_grad():
        clone.prompt_encoder.prompt_embeddings.zero_()
    assert not torch.equal(logits(clone, batch), expected)
    assert torch.equal(logits(model, batch), expected)


def test_position_ids_are_refused(batch):
    with pytest.raises(ValueError, match="do not pass position_ids"):
        hidden(prompted().encoder, batch, position_ids=torch.arange(batch["input_ids"].shape[1])[None])


@pytest.mark.parametrize("make, kwargs, match", [
    (make_model, {"num_tokens": 0}, "num_tokens must be a positive int"),
    (make_model, {"num_tokens": 2.0}, "num_tokens must be a positive int"),
    (make_model, {"num_tokens": 64}, r"num_tokens=64 leaves no positions.*max_position_embeddings=64"),
    (make_model, {"init": "zeros"}, r"init must be one of \('random', 'vocab', 'text'\)"),
    (make_model, {"init": "text"}, "init='text' needs text="),
    (make_model, {"text": "hello"}, "text is only used with init='text'"),
    (lambda: prompted(), {}, r"already applied.*remove_prompt_tuning\(model\) first"),
    (lambda: apply_feature_extraction(make_model()), {}, "cannot follow feature extraction.*fresh model"),
    (lambda: apply_lora(make_model()), {}, "lora_\\* parameters .* would silently stop training"),
    (lambda: make_model(is_decoder=True), {}, "bidirectional encoders"),
], ids=["zero-tokens", "float-tokens", "too-many", "bad-init", "text-missing", "text-unused", "twice",
        "after-feature-extraction", "after-lora", "decoder"])
def test_bad_inputs_raise_and_name_the_fix(make, kwargs, match):
    model = make()
    names = [n for n, _ in model.named_parameters()]
    with pytest.raises(ValueError, match=match):
        apply_prompt_tuning(model, **kwargs)
    assert names == [n for n, _ in model.named_parameters()]


def test_config_is_frozen():
    with pytest.raises(AttributeError):
        PromptTuningConfig().num_tokens = 3


@pytest.mark.slow
def test_embedded_minilm_matches_peft():
    from ftlib.models import build_classifier

    model, tokenizer = build_classifier()
    model.eval()
    enc = tokenizer(["prompt tuning prepends soft tokens", "short"], padding=True, return_tensors="pt")
    batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    torch.manual_seed(0)
    assert check_parity(model, batch, 20) == 20 * 384 == 7_680
    text = apply_prompt_tuning(copy.deepcopy(model), init="text", text="classify the sentiment")
    ids = tokenizer("classify the sentiment")["input_ids"]  # [CLS] ... [SEP], repeated to 20 as in PEFT
    words = model.encoder.get_input_embeddings().weight
    torch.testing.assert_close(text.prompt_encoder.prompt_embeddings, words[(ids * 20)[:20]], atol=0, rtol=0)
