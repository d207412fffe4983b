"""Prompt tuning: P trained "soft token" embeddings prepended to the input of a frozen encoder
(Lester, Al-Rfou & Constant 2021, "The Power of Scale for Parameter-Efficient Prompt Tuning", EMNLP,
arXiv:2104.08691; PEFT's PromptTuningConfig).

The encoder sees [p_1 .. p_P, e(x_1) .. e(x_T)]: P free vectors in the word-embedding space, then the
real tokens' word embeddings, and it adds position (and token-type) embeddings to all P + T as usual.
Unlike prefix tuning, nothing happens inside the layers: the prompt only acts through attention at
every layer, as tokens do. P * H parameters in all (7,680 on MiniLM for P = 20).

How it is wired (as PEFT's FEATURE_EXTRACTION model does it, without replacing any module): a forward
pre-hook on the encoder turns input_ids into inputs_embeds with the prompt in front and widens the
attention mask by P always-visible columns (token_type_ids, if given, by P zeros); a forward hook
drops the P prompt positions from the returned hidden states, so the encoder returns (B, T, H) for the
real tokens only. The head therefore pools exactly what it pools without a prompt, the real tokens
under the caller's attention mask (mean pooling), or the real [CLS] (cls pooling), and never the
prompt positions: their states depend on the input only through attention, they would make pooled
features depend on P, and a disabled prompt would change the pooling. Padding stays invisible: pad
positions are masked as keys and excluded from the mean.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from .models import base_encoder
from .params import freeze_except, load_trainable, save_trainable, trainable_state_dict
from .selective import refuse_incompatible

PREFIX = "prompt_"  # the prompt lives in model.prompt_encoder.prompt_embeddings; freezing and saving use this
INITS = ("random", "vocab", "text")


@dataclass(frozen=True)
class PromptTuningConfig:
    """num_tokens soft tokens; init 'random' (normal at the word embeddings' scale), 'vocab' (embeddings of
    random vocabulary tokens) or 'text' (the embeddings of `text`'s tokens, repeated or cut to num_tokens)."""

    num_tokens: int = 20
    init: str = "random"
    text: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.num_tokens, bool) or not isinstance(self.num_tokens, int) or self.num_tokens <= 0:
            raise ValueError(f"num_tokens must be a positive int (Lester et al. use 5 to 150), got {self.num_tokens!r}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        if self.init == "text" and not (isinstance(self.text, str) and self.text.strip()):
            raise ValueError("init='text' needs text='...', e.g. text='classify the sentiment of this review'")
        if self.init != "text" and self.text is not None:
            raise ValueError(f"text is only used with init='text' (got init={self.init!r}); drop text or set init='text'")


class SoftPrompt(nn.Module):
    """The P trained embeddings, and the two encoder hooks that put them in front and take them out again."""

    def __init__(self, prompt: torch.Tensor, config: PromptTuningConfig):
        super().__init__()
        self.prompt_embeddings = nn.Parameter(prompt)  # (P, H)
        self.config = config
        self.enabled = True  # False: hooks do nothing, the encoder computes exactly what it did before

    @property
    def num_tokens(self) -> int:
        return self.prompt_embeddings.shape[0]

    def prepend(self, encoder: nn.Module, args: tuple, kwargs: dict):
        """Forward pre-hook: [prompt; word embeddings] as inputs_embeds, mask and token types widened by P."""
        if not self.enabled:
            return None
        if args:  # encoder(input_ids) called positionally
            kwargs = {"input_ids": args[0], **kwargs}
        if kwargs.get("position_ids") is not None:
            raise ValueError("prompt tuning shifts every real token by P positions; do not pass position_ids")
        ids, embeds = kwargs.pop("input_ids", None), kwargs.pop("inputs_embeds", None)
        if embeds is None:
            embeds = encoder.get_input_embeddings()(ids)  # (B, T, H)
        B, T, _ = embeds.shape
        P = self.num_tokens
        prompt = self.prompt_embeddings.to(embeds.dtype).expand(B, P, -1)  # (B, P, H)
        kwargs["inputs_embeds"] = torch.cat([prompt, embeds], dim=1)  # (B, P+T, H)
        mask = kwargs.get("attention_mask")
        mask = torch.ones(B, T, dtype=torch.long, device=embeds.device) if mask is None else mask
        kwargs["attention_mask"] = torch.cat([mask.new_ones(B, P), mask], dim=1)  # (B, P+T): prompt always visible
        if kwargs.get("token_type_ids") is not None:
            types = kwargs["token_type_ids"]
            kwargs["token_type_ids"] = torch.cat([types.new_zeros(B, P), types], dim=1)  # (B, P+T)
        return (), kwargs

    def strip(self, encoder: nn.Module, args: tuple, kwargs: dict, output):
        """Forward hook: drop the P prompt positions, so callers get (B, T, H) for the real tokens."""
        if not self.enabled:
            return None
        P = self.num_tokens
        if isinstance(output, tuple):  # return_dict=False
            return (output[0][:, P:], *output[1:])
        output["last_hidden_state"] = output.last_hidden_state[:, P:]  # (B, T, H)
        if output.get("hidden_states") is not None:
            output["hidden_states"] = tuple(h[:, P:] for h in output.hidden_states)
        return output


def _initial_prompt(encoder: nn.Module, config: PromptTuningConfig, tokenizer) -> torch.Tensor:
    """(P, H) starting values, drawn from the global torch generator (seed it for reproducibility)."""
    words = encoder.get_input_embeddings().weight.detach()  # (V, H)
    P = config.num_tokens
    if config.init == "random":  # at the scale of real token embeddings (PEFT's nn.Embedding default is N(0, 1))
        return torch.randn(P, words.shape[1], device=words.device, dtype=words.dtype) * words.std()
    if config.init == "vocab":  # PEFT's SAMPLE_VOCAB: uniformly drawn vocabulary rows
        return words[torch.randint(0, words.shape[0], (P,))].clone()
    if tokenizer is None:
        source = getattr(encoder.config, "_name_or_path", None)
        try:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
        except (OSError, ValueError, TypeError) as e:
            raise ValueError(f"init='text' needs the model's tokenizer and none could be loaded from {source!r}; "
                             "pass tokenizer=... to apply_prompt_tuning") from e
    ids = tokenizer(config.text)["input_ids"]  # with [CLS]/[SEP], as PEFT's TEXT init does
    ids = (ids * (P // len(ids) + 1))[:P]  # repeat or cut to P tokens
    return words[torch.tensor(ids, device=words.device)].clone()


def apply_prompt_tuning(model: nn.Module, num_tokens: int = 20, init: str = "random", text: str | None = None,
                        *, tokenizer=None) -> nn.Module:
    """Prepend num_tokens trained embeddings to every input; freeze all but them and the head; in place."""
    config = PromptTuningConfig(num_tokens, init, text)
    if isinstance(getattr(model, "prompt_encoder", None), SoftPrompt):
        raise ValueError("prompt tuning is already applied to this model; remove_prompt_tuning(model) first")
    refuse_incompatible(model, "prompt tuning", PREFIX, "apply_prompt_tuning to a fresh model")
    encoder = base_encoder(model)
    if not callable(getattr(encoder, "get_input_embeddings", None)) or \
            not isinstance(encoder.get_input_embeddings(), nn.Embedding):
        raise ValueError(f"prompt tuning needs a transformers encoder with word embeddings, got "
                         f"{type(encoder).__name__}")
    if getattr(encoder.config, "is_decoder", False):
        raise ValueError("prompt tuning here is for bidirectional encoders; this model is configured as a decoder")
    P = config.num_tokens
    limit = getattr(encoder.config, "max_position_embeddings", None)
    if limit is not None and P >= limit:
        raise ValueError(f"num_tokens={P} leaves no positions for the text (max_position_embeddings={limit}); "
                         "use fewer prompt tokens")
    source = SoftPrompt(_initial_prompt(encoder, config, tokenizer), config).train(model.training)
    model.prompt_encoder = source
    encoder.register_forward_pre_hook(source.prepend, with_kwargs=True)
    encoder.register_forward_hook(source.strip, with_kwargs=True)
    return freeze_except(model, lambda n: any(part.startswith(PREFIX) for part in n.split(".")))


def _prompt(model: nn.Module) -> SoftPrompt:
    source = getattr(model, "prompt_encoder", None)
    if not isinstance(source, SoftPrompt):
        raise ValueError("this model has no soft prompt; call apply_prompt_tuning(model) first")
    return source


def remove_prompt_tuning(model: nn.Module) -> nn.Module:
    """Unhook the prompt and delete it: the encoder is back to its original computation."""
    source = _prompt(model)
    encoder = base_encoder(model)
    for hooks in (encoder._forward_pre_hooks, encoder._forward_hooks):
        for key in [k for k, h in hooks.items() if getattr(h, "__self__", None) is source]:
            del hooks[key]
    del model.prompt_encoder
    return model


@contextlib.contextmanager
def prompt_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block no prompt is prepended: the encoder gives exactly its original outputs."""
    source = _prompt(model)
    previous, source.enabled = source.enabled, False
    try:
        yield model
    finally:
        source.enabled = previous


def prompt_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The prompt plus the classifier head: everything the task changed."""
    _prompt(model)
    return trainable_state_dict(model, prefixes=(PREFIX,))


def save_prompt_tuning(model: nn.Module, path: str | Path) -> Path:
    """Write prompt_state_dict to safetensors, with the settings in its metadata."""
    config = _prompt(model).config
    return save_trainable(model, path, tensors=prompt_state_dict(model), metadata={"prompt_tuning": asdict(config)})


def load_prompt_tuning(model: nn.Module, path: str | Path) -> nn.Module:
    """Load save_prompt_tuning's file into a model given apply_prompt_tuning with as many tokens (checked)."""
    with safe_open(str(path), framework="pt") as f:
        saved = json.loads((f.metadata() or {}).get("ftlib", "{}")).get("prompt_tuning")
    if saved is None:
        raise ValueError(f"{path} was not written by save_prompt_tuning (no prompt-tuning settings in its metadata)")
    ours = _prompt(model).config
    if ours.num_tokens != saved["num_tokens"]:
        raise ValueError(f"{path} holds {saved['num_tokens']} prompt tokens, the model {ours.num_tokens}; "
                         f"apply_prompt_tuning(model, num_tokens={saved['num_tokens']}) first")
    return load_trainable(model, path)
