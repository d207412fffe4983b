"""Prefix tuning: trainable key/value prefixes in every self-attention layer of a frozen encoder.

Follows Li & Liang 2021, "Prefix-Tuning: Optimizing Continuous Prompts for Generation": each layer's
attention sees P extra key/value vectors before the real tokens, and those vectors come from a small
MLP over P learned embeddings (the reparameterisation that made their training stable), baked into
plain tensors once training is over.

Why not `past_key_values`, as the reference sketch does: in transformers 5.x a BERT/RoBERTa encoder
builds its mask from the input alone and takes no usable cache, so there is nothing to pass the
prefixes through (PEFT's own prefix tuning fails on BERT with "Model does not support past key
values"). Instead each layer's self-attention module is swapped for `PrefixSelfAttention`, which
reuses the frozen query/key/value Linears, prepends the prefix to keys and values, widens the mask
by P always-visible columns and calls the same attention function transformers would (eager or sdpa).
No tokens are added to input_ids, so the positions of the real tokens do not move.

The verbs are the shared lifecycle of ftlib.lifecycle: apply_prefix_tuning, bake_prefix, remove_prefix,
prefix_disabled, save_prefix / load_prefix, and PREFIX_TUNING_PREFIX on every added tensor's name.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.bert.modeling_bert import eager_attention_forward  # RoBERTa's is a verbatim copy

from ftlib.lifecycle import (
    Recipe,
    check_can_apply,
    check_config,
    config_dict,
    load_added,
    read_saved,
    release_head_only,
    resolve_config,
    save_added,
)
from ftlib.models import base_encoder, encoder_layers
from ftlib.params import PREFIX_TUNING_PREFIX, freeze_except, has_prefix
from ftlib.strategy_tag import tag_strategy

SUPPORTED_ATTENTION = ("eager", "sdpa")  # both take a 4D mask we can widen; flash/flex take other mask forms
LR = 1e-3  # peak learning rate on MiniLM (quick profile)


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:  # True is an int to Python, not a size
        raise ValueError(f"{name} must be a positive int, got {value!r}")


@dataclass(frozen=True)
class PrefixConfig:
    """What apply_prefix_tuning needs: P prefix vectors per layer, made by an MLP of this hidden width."""

    prefix_length: int = 20
    projection_dim: int = 512  # Li & Liang's reparameterisation MLP; it exists only while training

    def __post_init__(self):
        _check_positive_int("prefix_length", self.prefix_length)
        _check_positive_int("projection_dim", self.projection_dim)


class PrefixEncoder(nn.Module):
    """Li & Liang's reparameterisation: P embeddings -> MLP -> a key and a value prefix for every layer."""

    def __init__(self, n_layers: int, hidden: int, prefix_length: int, projection_dim: int):
        super().__init__()
        self.n_layers, self.hidden, self.prefix_length = n_layers, hidden, prefix_length
        self.projection_dim = projection_dim  # kept after bake_prefix drops the MLP, for prefix_config
        self.prefix_embedding = nn.Embedding(prefix_length, hidden)
        self.prefix_mlp = nn.Sequential(
            nn.Linear(hidden, projection_dim), nn.Tanh(), nn.Linear(projection_dim, 2 * n_layers * hidden)
        )
        self.enabled = True  # False masks the prefix out: the encoder then computes exactly what it did before

    @property
    def baked(self) -> bool:
        return hasattr(self, "prefix_keys")

    def forward(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Key and value prefix of one layer, each (P, H); only that layer's rows of the MLP are computed."""
        if self.baked:
            return self.prefix_keys[layer], self.prefix_values[layer]  # (P, H) each
        H = self.hidden
        h = self.prefix_mlp[1](self.prefix_mlp[0](self.prefix_embedding.weight))  # (P, D)
        # The output (P, 2*L*H) reads as (P, L, 2, H): layer `layer` owns rows [2*layer*H, 2*(layer+1)*H)
        # of the last Linear, keys first. Slicing them computes the same numbers as the full output, L times cheaper.
        out, rows = self.prefix_mlp[2], slice(2 * layer * H, 2 * (layer + 1) * H)
        kv = F.linear(h, out.weight[rows], out.bias[rows])  # (P, 2H)
        return kv[:, :H], kv[:, H:]  # (P, H) each

    def all_layers(self) -> torch.Tensor:
        """Every layer's prefixes stacked, (L, 2, P, H): what bake_prefix stores and what a reader can plot."""
        return torch.stack([torch.stack(self(i)) for i in range(self.n_layers)])  # (L, 2, P, H)


def _widen_mask(mask: torch.Tensor | None, P: int, T: int, visible: bool, like: torch.Tensor) -> torch.Tensor | None:
    """Prepend P prefix columns to the mask transformers built, (B, 1, T, T) -> (B, 1, T, P+T)."""
    if mask is None:  # sdpa/eager without padding: every key visible
        if visible:
            return None  # the prefix is visible too, so still no mask
        mask = like.new_zeros(1, 1, T, T)  # additive form: 0 = attend
    if mask.dtype == torch.bool:  # sdpa with padding: True = attend
        cols = mask.new_full((*mask.shape[:-1], P), visible)  # (B, 1, T, P)
    else:  # additive float (eager with padding, or the zeros above): finfo.min = never attend
        cols = mask.new_full((*mask.shape[:-1], P), 0.0 if visible else torch.finfo(mask.dtype).min)  # (B, 1, T, P)
    return torch.cat([cols, mask], dim=-1)  # (B, 1, T, P+T)


def _check_attention(impl: str | None) -> None:
    if impl not in SUPPORTED_ATTENTION:
        raise ValueError(f"prefix tuning supports attn_implementation in {SUPPORTED_ATTENTION}, got {impl!r}; "
                         "load the encoder with attn_implementation='sdpa' (the default) or 'eager'")


class PrefixSelfAttention(nn.Module):
    """BertSelfAttention/RobertaSelfAttention with [prefix; tokens] as keys and values."""

    def __init__(self, attn: nn.Module, source: PrefixEncoder, layer: int):
        super().__init__()
        # The frozen Linears are reused as direct children, so their names (…attention.self.query.weight) don't change
        self.query, self.key, self.value, self.dropout = attn.query, attn.key, attn.value, attn.dropout
        self.config, self.scaling, self.is_causal = attn.config, attn.scaling, False
        self.num_attention_heads, self.attention_head_size = attn.num_attention_heads, attn.attention_head_size
        self.prefix_layer = layer
        self.train(attn.training)  # a new Module starts in training mode; inherit eval so dropout stays off
        # Plain references, not children: the one PrefixEncoder is registered once, on the model, as prefix_encoder;
        # the replaced module is what remove_prefix puts back
        object.__setattr__(self, "prefix_source", source)
        object.__setattr__(self, "original", attn)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, cache=None, **kwargs):
        """Same inputs and outputs as the module it replaces; the returned weights are (B, nh, T, P+T)."""
        if cache is not None:
            raise NotImplementedError("prefix tuning here is for encoders; a key/value cache is not supported")
        kwargs.pop("encoder_hidden_states", None)  # BertAttention forwards it; self-attention never uses it
        _check_attention(self.config._attn_implementation)
        B, T, _ = hidden_states.shape
        nh, hd, P = self.num_attention_heads, self.attention_head_size, self.prefix_source.prefix_length
        q = self.query(hidden_states).view(B, T, nh, hd).transpose(1, 2)  # (B, nh, T, hd)
        k = self.key(hidden_states).view(B, T, nh, hd).transpose(1, 2)  # (B, nh, T, hd)
        v = self.value(hidden_states).view(B, T, nh, hd).transpose(1, 2)  # (B, nh, T, hd)
        pk, pv = (p.to(q.dtype).view(P, nh, hd).transpose(0, 1).expand(B, nh, P, hd)  # (B, nh, P, hd)
                  for p in self.prefix_source(self.prefix_layer))
        k = torch.cat([pk, k], dim=2)  # (B, nh, P+T, hd)
        v = torch.cat([pv, v], dim=2)  # (B, nh, P+T, hd)
        mask = _widen_mask(attention_mask, P, T, self.prefix_source.enabled, q)  # (B, 1, T, P+T) or None
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        out, weights = attention(self, q, k, v, mask, dropout=self.dropout.p if self.training else 0.0,
                                 scaling=self.scaling, **kwargs)  # (B, T, nh, hd), (B, nh, T, P+T) or None
        return out.reshape(B, T, nh * hd), weights  # (B, T, H)


def _record_attentions(wrapper: nn.Module, replaced: type, encoder: nn.Module) -> None:
    """Keep output_attentions=True working: transformers records weights by hooking the class we replaced."""
    with contextlib.suppress(ImportError, AttributeError):  # a private helper; without it only that feature is lost
        from transformers.utils.output_capturing import install_output_capuring_hook
        if (getattr(encoder, "_can_record_outputs", None) or {}).get("attentions") is replaced:
            install_output_capuring_hook(wrapper, "attentions", 1)  # index 1: the weights in (out, weights)


def _self_attention_modules(model: nn.Module) -> list[nn.Module]:
    """Each layer's attention block holding a `.self` with query/key/value Linears (BERT/RoBERTa layout)."""
    try:
        layers = encoder_layers(model)
    except ValueError as e:
        raise ValueError(f"prefix tuning needs self-attention layers: {e}") from e
    blocks = []
    for i, layer in enumerate(layers):
        block = getattr(layer, "attention", None)
        attn = getattr(block, "self", None)
        if not all(isinstance(getattr(attn, n, None), nn.Linear) for n in ("query", "key", "value")):
            raise ValueError(f"prefix tuning needs self-attention layers: layer {i} ({type(layer).__name__}) has no "
                             "attention.self with query/key/value Linears")
        blocks.append(block)
    return blocks


def apply_prefix_tuning(model: nn.Module, prefix_length: int = 20, projection_dim: int = 512, *,
                        config: PrefixConfig | None = None) -> nn.Module:
    """Add trainable prefixes to every self-attention layer, freeze the rest but the head; in place.

    Give the settings as keyword arguments or as config=PrefixConfig(...), not both."""
    config = resolve_config(PrefixConfig, config, prefix_length=prefix_length, projection_dim=projection_dim)
    if hasattr(model, "prefix_encoder") or any(isinstance(m, PrefixSelfAttention) for m in model.modules()):
        raise ValueError("prefix tuning is already applied to this model; apply it to a fresh model")
    check_can_apply(model, "prefix-tuning")  # over LoRA or adapters: refused, naming the fix
    blocks = _self_attention_modules(model)
    encoder_config = base_encoder(model).config
    _check_attention(encoder_config._attn_implementation)
    if getattr(encoder_config, "is_decoder", False):
        raise ValueError("prefix tuning here is for bidirectional encoders; this model is configured as a decoder")
    release_head_only(model)  # over feature extraction: the encoder's dropout comes back with train()
    weight = blocks[0].self.query.weight
    source = PrefixEncoder(len(blocks), encoder_config.hidden_size, config.prefix_length, config.projection_dim)
    model.prefix_encoder = source.to(device=weight.device, dtype=weight.dtype).train(model.training)
    for i, block in enumerate(blocks):
        replaced, block.self = type(block.self), PrefixSelfAttention(block.self, source, i)
        _record_attentions(block.self, replaced, base_encoder(model))
    freeze_except(model, lambda name: has_prefix(name, PREFIX_TUNING_PREFIX))
    return tag_strategy(model, "prefix-tuning", config)  # fit and checkpoints read it


def _prefix_encoder(model: nn.Module) -> PrefixEncoder:
    source = getattr(model, "prefix_encoder", None)
    if not isinstance(source, PrefixEncoder):
        raise ValueError("this model has no prefix; call apply_prefix_tuning(model) first")
    return source


@torch.no_grad()
def bake_prefix(model: nn.Module) -> nn.Module:
    """Run the MLP once and keep only its output, so inference skips it; one-way, in place."""
    source = _prefix_encoder(model)
    if source.baked:
        raise ValueError("the prefix is already baked")
    kv = source.all_layers()  # (L, 2, P, H)
    # Frozen: the MLP existed to make training stable (Li & Liang 2021); training the raw prefix is opt-in,
    # via model.prefix_encoder.prefix_keys.requires_grad_(). save_prefix and save_trainable keep them anyway.
    source.prefix_keys = nn.Parameter(kv[:, 0].clone(), requires_grad=False)  # (L, P, H)
    source.prefix_values = nn.Parameter(kv[:, 1].clone(), requires_grad=False)  # (L, P, H)
    del source.prefix_embedding, source.prefix_mlp  # training scaffolding, no longer used
    return model


@contextlib.contextmanager
def prefix_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Mask the prefix out inside the block: the encoder then gives exactly its original outputs."""
    source = _prefix_encoder(model)
    previous, source.enabled = source.enabled, False
    try:
        yield model
    finally:
        source.enabled = previous


def remove_prefix(model: nn.Module) -> nn.Module:
    """Put the original self-attention modules back and drop the prefix (baked or not); in place."""
    _prefix_encoder(model)
    for block in _self_attention_modules(model):
        if isinstance(block.self, PrefixSelfAttention):
            block.self = block.self.original
    del model.prefix_encoder
    return model


def prefix_config(model: nn.Module) -> PrefixConfig:
    """The PrefixConfig that rebuilds the model's prefix on a fresh model."""
    source = _prefix_encoder(model)
    return PrefixConfig(source.prefix_length, source.projection_dim)


def save_prefix(model: nn.Module, path: str | Path) -> Path:
    """Write the prefix (the MLP, or the baked keys/values: about 2*L*P*H numbers) and the head, config in metadata."""
    return save_added(model, path, "prefix-tuning", config_dict(prefix_config(model)),
                      baked=_prefix_encoder(model).baked)


def load_prefix(model: nn.Module, path: str | Path) -> nn.Module:
    """Load save_prefix's file into a model given apply_prefix_tuning with the same settings (checked).

    A baked file needs a baked model: an unbaked one is baked first (its MLP is then overwritten anyway)."""
    meta, keys = read_saved(path, "prefix-tuning")
    saved = meta["config"]
    if not isinstance(getattr(model, "prefix_encoder", None), PrefixEncoder):
        raise ValueError(f"model has no prefix; first call apply_prefix_tuning(model, prefix_length="
                         f"{saved['prefix_length']}, projection_dim={saved['projection_dim']}), the settings in {path}")
    check_config(path, saved, config_dict(prefix_config(model)), ("prefix_length", "projection_dim"),
                 "apply_prefix_tuning")
    if meta.get("baked") and not model.prefix_encoder.baked:
        bake_prefix(model)
    elif model.prefix_encoder.baked and not meta.get("baked"):
        raise ValueError(f"{path} holds the prefix MLP, but the model's prefix is baked; load it into a model "
                         "given apply_prefix_tuning only, then bake_prefix(model)")
    return load_added(model, path, "prefix-tuning", keys)


RECIPE = Recipe("prefix-tuning", apply_prefix_tuning, lr=LR, summary="20 trained key/value prefixes per layer")
