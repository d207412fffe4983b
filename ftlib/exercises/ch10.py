"""Checks for chapter 10 (prompt tuning): the trained count for bert-base, pooling PEFT's output over the real
tokens, and whether a trained prompt reads as words (an experiment)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from . import expect, is_int

READABLE = 0.5  # a mean best cosine above this: the prompt is "readable as words"
TIE = 1e-5  # a nearest id whose cosine is within TIE of the best counts as the nearest (float ties)



def check_prompt_count(prompt_bert_base, num_tokens: int = 100) -> None:
    """Exercise 1: what prompt tuning trains on bert-base (L=12, H=768) with P = num_tokens, head excluded.

    The reference is apply_prompt_tuning on bert-base built on the meta device (no weights, no download)."""
    import transformers

    from ..prompt_tuning import apply_prompt_tuning

    expect(is_int(prompt_bert_base), "give the count as an int (a number of trained values)")
    with torch.device("meta"):
        bert_base = transformers.BertModel(transformers.BertConfig(), add_pooling_layer=False)
    apply_prompt_tuning(bert_base, num_tokens=num_tokens)
    counted = sum(p.numel() for p in bert_base.parameters() if p.requires_grad)
    expect(prompt_bert_base <= counted,
           "too many: the prompt enters once, at the input of layer 0, not in every layer, and the head is excluded")
    expect(prompt_bert_base == counted,
           "too few: what shape does the trained prompt have (see section 1)?")


def _pool(pool_real: Callable, states: torch.Tensor, attention_mask: torch.Tensor, P: int) -> torch.Tensor:
    try:
        with torch.no_grad():
            out = pool_real(states, attention_mask, P)
    except Exception as e:  # a shape error is a wrong answer, not a crash of the check
        raise AssertionError(f"pool_real raised {type(e).__name__} for states {tuple(states.shape)}, mask "
                             f"{tuple(attention_mask.shape)} and P = {P}: the mask covers the real tokens only, "
                             "the states the prompt too") from None
    expect(isinstance(out, torch.Tensor), "return a tensor of shape (B, H)")
    return out


def check_pool_real(pool_real: Callable, states: torch.Tensor, attention_mask: torch.Tensor,
                    features: torch.Tensor) -> None:
    """Exercise 2: pool_real(states, attention_mask, P) on PEFT's (B, P+T, H) states equals ftlib's pooled
    (B, H) features of the same batch (atol 1e-5), with P = the positions the states have beyond the mask."""
    B, T = attention_mask.shape
    expect(states.shape[0] == B and states.shape[1] > T, "states: PEFT's (B, P+T, H) output for this batch")
    expect(bool((attention_mask == 0).any()), "the check needs a padded batch (texts of different lengths)")
    P = states.shape[1] - T
    got = _pool(pool_real, states, attention_mask, P)
    expect(tuple(got.shape) == tuple(features.shape), f"the result must be (B, H) = {tuple(features.shape)}")
    expect(bool(torch.isfinite(got).all()), "the result has NaN or inf: does the mean divide by a zero count?")
    if torch.allclose(got, features, atol=1e-5, rtol=0):
        return
    real = states[:, P:]  # (B, T, H)
    all_real = real.mean(1)
    with_prompt = torch.cat([torch.ones(B, P, dtype=attention_mask.dtype), attention_mask], 1).unsqueeze(-1)
    prompt_too = (states * with_prompt).sum(1) / with_prompt.sum(1)
    if torch.allclose(got, all_real, atol=1e-5, rtol=0):
        raise AssertionError("your mean includes the padded positions: weight each real position by the mask")
    if torch.allclose(got, prompt_too, atol=1e-5, rtol=0) or torch.allclose(got, states.mean(1), atol=1e-5, rtol=0):
        raise AssertionError("your mean includes the prompt positions: the head pools the real tokens only")
    raise AssertionError("not ftlib's pooled features: the mean over the real, non-padded tokens, which sit after "
                         "the P prompt positions")


def check_nearest_words(nearest_ids: Sequence[int], mean_best_cos: float, readable: bool,
                        prompt: torch.Tensor, word_embeddings: torch.Tensor) -> None:
    """Exercise 3: for each of the P prompt vectors, the word embedding of highest cosine; the mean of those P
    cosines (within 1e-4); and readable, judged from the student's own mean against READABLE."""
    prompt, words = prompt.detach().float().cpu(), word_embeddings.detach().float().cpu()
    P = prompt.shape[0]
    ids = list(nearest_ids) if isinstance(nearest_ids, Sequence | torch.Tensor) else None
    expect(ids is not None and len(ids) == P, f"nearest_ids: one token id per prompt vector ({P} of them), in order")
    ids = [int(i) if isinstance(i, torch.Tensor) and i.numel() == 1 else i for i in ids]
    expect(all(is_int(i) and 0 <= i < words.shape[0] for i in ids), "nearest_ids holds ints: rows of the vocabulary")
    sims = F.normalize(prompt, dim=-1) @ F.normalize(words, dim=-1).T  # (P, V)
    best = sims.max(dim=-1).values  # (P,)
    chosen = sims[torch.arange(P), torch.tensor(ids)]  # (P,)
    expect(bool((chosen >= best - TIE).all()),
           "one id per prompt vector: the most cosine-similar word embedding (cosine, not dot product or distance)")
    expect(isinstance(mean_best_cos, int | float) and not isinstance(mean_best_cos, bool)
           and math.isfinite(mean_best_cos), "mean_best_cos is a number")
    expect(abs(mean_best_cos - chosen.mean().item()) < 1e-4,
           "mean_best_cos: the mean over the P prompt vectors of their best cosine")
    expect(isinstance(readable, bool), "readable is True or False")
    expect(readable == (mean_best_cos > READABLE),
           f"readable does not follow from your mean best cosine and the stated threshold ({READABLE})")
