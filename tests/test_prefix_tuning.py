"""Properties of prefix tuning on tiny BERT/RoBERTa, under eager and sdpa attention."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import TINY, make_model
from torch import nn

from ftlib.models import encoder_layers
from ftlib.params import count_parameters, load_trainable, save_trainable, trainable_state_dict
from ftlib.prefix_tuning import PrefixSelfAttention, apply_prefix_tuning, bake_prefix, prefix_disabled

P, D = 3, 16  # tiny prefix and projection so every check runs in milliseconds
L, H, NH = TINY["num_hidden_layers"], TINY["hidden_size"], TINY["num_attention_heads"]
IMPLS = ("eager", "sdpa")


def closed_form(P: int, H: int, D: int, L: int) -> int:
    """Embedding P*H, first Linear H*D + D, second Linear D*2LH + 2LH."""
    return P * H + (H * D + D) + (D * 2 * L * H + 2 * L * H)


def prefixed(arch: str, impl: str | None = None, seed: int = 0, prefix_seed: int = 0):
    model = make_model(arch, attn_implementation=impl, seed=seed)
    torch.manual_seed(prefix_seed)  # the prefix is initialised from the global generator
    return apply_prefix_tuning(model, prefix_length=P, projection_dim=D)


def logits(model, batch, padded: bool = True) -> torch.Tensor:
    mask = batch["attention_mask"] if padded else torch.ones_like(batch["attention_mask"])
    return model(batch["input_ids"], mask)


def hidden(model, batch, **kwargs):
    return model.encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **kwargs)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matmuls on a shared, busy CPU: one thread is ~100x faster than several spinning ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=IMPLS)
def impl(request) -> str:
    return request.param


def hand_prefixes(source) -> torch.Tensor:
    """The documented reparameterisation from raw weights: tanh(E W1^T + b1) W2^T + b2 -> (L, 2, P, H)."""
    W1, b1 = source.prefix_mlp[0].weight, source.prefix_mlp[0].bias
    W2, b2 = source.prefix_mlp[2].weight, source.prefix_mlp[2].bias
    out = torch.tanh(source.prefix_embedding.weight @ W1.T + b1) @ W2.T + b2  # (P, 2LH)
    return out.view(P, L, 2, H).permute(1, 2, 0, 3)  # (L, 2, P, H)


def hand_attention(attn, x, attention_mask, pk, pv) -> torch.Tensor:
    """softmax(q [pk; k]^T / sqrt(hd) + mask) [pv; v] with explicit matmuls; the mask hides padded keys only."""
    B, T, _ = x.shape
    hd = H // NH

    def heads(t):  # (B, T', H) -> (B, nh, T', hd)
        return t.view(B, -1, NH, hd).transpose(1, 2)

    q = heads(x @ attn.query.weight.T + attn.query.bias)  # (B, nh, T, hd)
    k = torch.cat([heads(pk.expand(B, P, H)), heads(x @ attn.key.weight.T + attn.key.bias)], 2)  # (B, nh, P+T, hd)
    v = torch.cat([heads(pv.expand(B, P, H)), heads(x @ attn.value.weight.T + attn.value.bias)], 2)
    visible = torch.cat([torch.ones(B, P), attention_mask.float()], 1)  # (B, P+T)
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd) + (1 - visible)[:, None, None, :] * -1e9  # (B, nh, T, P+T)
    return (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, H)  # (B, T, H)


def test_attention_matches_hand_computation(arch, impl, batch):
    model = prefixed(arch, impl)
    seen = {}
    for i, layer in enumerate(encoder_layers(model)):
        def grab(module, args, kwargs, output, i=i):
            seen[i] = (args[0] if args else kwargs["hidden_states"], output[0])
        layer.attention.self.register_forward_hook(grab, with_kwargs=True)
    with torch.no_grad():
        logits(model, batch)
        kv = hand_prefixes(model.prefix_encoder)  # (L, 2, P, H)
        for i, layer in enumerate(encoder_layers(model)):
            x, out = seen[i]
            ref = hand_attention(layer.attention.self, x, batch["attention_mask"], kv[i, 0], kv[i, 1])
            torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_padded_ids_do_not_reach_real_positions(arch, impl, batch):
    model = prefixed(arch, impl)
    real = batch["attention_mask"].bool()
    other = dict(batch, input_ids=torch.where(real, batch["input_ids"], 42))
    with torch.no_grad():
        a, b = hidden(model, batch).last_hidden_state, hidden(model, other).last_hidden_state  # (B, T, H)
    assert not torch.equal(batch["input_ids"], other["input_ids"])
    torch.testing.assert_close(a[real], b[real], atol=1e-6, rtol=0)


def test_padded_keys_get_zero_weight_and_prefix_keys_do_not(arch, batch):
    model = prefixed(arch, "eager")  # sdpa never materialises the weights
    with torch.no_grad():
        attentions = hidden(model, batch, output_attentions=True).attentions
    T = batch["input_ids"].shape[1]
    assert len(attentions) == L and all(w.shape == (4, NH, T, P + T) for w in attentions)
    keys_visible = torch.cat([torch.ones(4, P, dtype=torch.bool), batch["attention_mask"].bool()], 1)  # (B, P+T)
    for w in attentions:  # (B, nh, T, P+T)
        torch.testing.assert_close(w.sum(-1), torch.ones(4, NH, T))
        assert (w.masked_select(~keys_visible[:, None, None, :]) == 0).all()
        assert (w[..., :P] > 0).all()


@pytest.mark.parametrize("padded", [True, False], ids=["padding", "no-padding"])  # sdpa gets no mask without padding
def test_prefix_masked_out_equals_original_and_active_differs(arch, impl, batch, padded):
    original, model = make_model(arch, attn_implementation=impl), prefixed(arch, impl)
    with torch.no_grad():
        expected, active = logits(original, batch, padded), logits(model, batch, padded)
        with prefix_disabled(model):
            masked = logits(model, batch, padded)
        after = logits(model, batch, padded)
    torch.testing.assert_close(masked, expected, atol=1e-6, rtol=0)
    assert (active - expected).abs().max() > 1e-3
    assert torch.equal(after, active)  # the context manager restores the prefix


def test_eager_and_sdpa_agree(arch, batch):
    eager, sdpa = prefixed(arch, "eager", prefix_seed=0), prefixed(arch, "sdpa", prefix_seed=1)
    sdpa.load_state_dict(eager.state_dict())
    with torch.no_grad():
        for padded in (True, False):
            torch.testing.assert_close(logits(sdpa, batch, padded), logits(eager, batch, padded), atol=1e-5, rtol=0)
        torch.testing.assert_close(hidden(sdpa, batch).last_hidden_state, hidden(eager, batch).last_hidden_state,
                                   atol=1e-5, rtol=0)


def test_baked_equals_unbaked_and_drops_the_mlp(arch, impl, batch, tmp_path):
    model, original = prefixed(arch, impl), make_model(arch, attn_implementation=impl)
    with torch.no_grad():
        before = logits(model, batch)
        bake_prefix(model)
        after = logits(model, batch)
        with prefix_disabled(model):
            masked = logits(model, batch)
        expected = logits(original, batch)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)
    torch.testing.assert_close(masked, expected, atol=1e-6, rtol=0)
    source = model.prefix_encoder
    assert source.prefix_keys.shape == source.prefix_values.shape == (L, P, H)
    assert not source.prefix_keys.requires_grad and not hasattr(source, "prefix_mlp")
    # The baked prefix saves and loads like any prefix_ tensor
    path = save_trainable(model, tmp_path / "baked.safetensors", tensors=trainable_state_dict(model, ["prefix_"]))
    fresh = bake_prefix(prefixed(arch, impl, prefix_seed=7))
    with torch.no_grad():
        assert not torch.equal(logits(fresh, batch), after)
        assert torch.equal(logits(load_trainable(fresh, path), batch), after)


def test_only_prefix_and_head_train_with_the_closed_form_count(arch):
    original, model = make_model(arch), prefixed(arch)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    new = {n for n, _ in model.named_parameters() if n.startswith("prefix_")}
    assert trainable == new | {"classifier.weight", "classifier.bias"}
    assert all(n.startswith("prefix_encoder.prefix_") for n in new)
    head = H * 3 + 3
    assert count_parameters(model).trainable == closed_form(P, H, D, L) + head
    assert count_parameters(model).total == count_parameters(original).total + closed_form(P, H, D, L)
    # the frozen encoder keeps its parameter names, so its checkpoints still load
    assert set(model.state_dict()) - new == set(original.state_dict())


def test_one_adamw_step_lowers_loss_and_changes_exactly_the_trainable(arch, batch):
    model = prefixed(arch)  # eval mode: no dropout, so the two losses are comparable
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)  # frozen tensors get no grad, so AdamW skips them

    def loss():
        return nn.functional.cross_entropy(logits(model, batch), batch["labels"])

    first = loss()
    first.backward()
    opt.step()
    with torch.no_grad():
        assert loss() < first
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {n for n, p in model.named_parameters() if p.requires_grad}


def test_save_load_into_fresh_model_reproduces_outputs(arch, impl, batch, tmp_path):
    model = prefixed(arch, impl, prefix_seed=0)
    path = save_trainable(model, tmp_path / "prefix.safetensors")
    fresh = prefixed(arch, impl, prefix_seed=1)
    with torch.no_grad():
        assert not torch.equal(logits(fresh, batch), logits(model, batch))
        assert torch.equal(logits(load_trainable(fresh, path), batch), logits(model, batch))


def test_deepcopy_gets_its_own_prefix(batch):
    model = prefixed("bert")
    clone = copy.deepcopy(model)
    with torch.no_grad():
        expected = logits(model, batch)
        clone.prefix_encoder.prefix_embedding.weight.zero_()
        assert not torch.equal(logits(clone, batch), expected)
        assert torch.equal(logits(model, batch), expected)


class NoAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.ModuleList([nn.Linear(4, 4)])


@pytest.mark.parametrize("make, kwargs, match", [
    (make_model, {"prefix_length": 0}, "prefix_length must be a positive int"),
    (make_model, {"prefix_length": -2}, "prefix_length must be a positive int"),
    (make_model, {"prefix_length": 2.5}, "prefix_length must be a positive int"),
    (make_model, {"projection_dim": 0}, "projection_dim must be a positive int"),
    (lambda: nn.Sequential(nn.Linear(4, 4)), {}, "needs self-attention layers"),
    (NoAttention, {}, "layer 0 .* has no attention.self"),
    (lambda: apply_prefix_tuning(make_model()), {}, "already applied"),
    (lambda: make_model(attn_implementation="flex_attention"), {}, r"supports .*'eager', 'sdpa'.*'flex_attention'"),
    (lambda: make_model(is_decoder=True), {}, "bidirectional encoders"),
], ids=["length-0", "length-negative", "length-float", "projection-0", "no-layers", "no-self-attention",
        "twice", "flex", "decoder"])
def test_bad_inputs_raise(make, kwargs, match):
    with pytest.raises(ValueError, match=match):
        apply_prefix_tuning(make(), **kwargs)


def test_flash_attention_is_refused_at_apply_and_forward(batch):
    model = make_model()
    model.config._attn_implementation = "flash_attention_2"  # the setter does not check; loading would need flash-attn
    with pytest.raises(ValueError, match=r"supports attn_implementation in \('eager', 'sdpa'\), got 'flash_attention_2'"):
        apply_prefix_tuning(model)
    model = prefixed("bert")
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="supports attn_implementation"):
        logits(model, batch)


def test_bake_and_disable_need_a_prefix():
    with pytest.raises(ValueError, match="call apply_prefix_tuning"):
        bake_prefix(make_model())
    with pytest.raises(ValueError, match="call apply_prefix_tuning"), prefix_disabled(make_model()):
        pass
    with pytest.raises(ValueError, match="already baked"):
        bake_prefix(bake_prefix(prefixed("bert")))


@pytest.mark.slow
def test_embedded_minilm(minilm):
    original, tokenizer = minilm
    original.eval()
    model = copy.deepcopy(original)
    apply_prefix_tuning(model)  # defaults: 20 prefix vectors, projection 512
    assert sum(isinstance(m, PrefixSelfAttention) for m in model.modules()) == 6
    enc = tokenizer(["prefix tuning keeps the encoder frozen", "short"], padding=True, return_tensors="pt")
    batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    with torch.no_grad():
        expected, active = logits(original, batch), logits(model, batch)
        with prefix_disabled(model):
            masked = logits(model, batch)
    torch.testing.assert_close(masked, expected, atol=1e-6, rtol=0)
    assert not torch.allclose(active, expected, atol=1e-4)
    cfg = model.config
    head = cfg.hidden_size * 2 + 2
    assert count_parameters(model).trainable == closed_form(20, cfg.hidden_size, 512, cfg.num_hidden_layers) + head
