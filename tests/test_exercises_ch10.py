"""Chapter 10's exercise checks: the right answer passes, an injected wrong one fails without naming the answer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import fails_quietly, make_batch, make_model

from ftlib.exercises import ch10
from ftlib.prompt_tuning import apply_prompt_tuning

PROMPT = 100 * 768  # bert-base, P = 100


def test_prompt_count_right_and_wrong():
    assert ch10.check_prompt_count(PROMPT) is None
    for wrong in (12 * PROMPT,  # a prompt in every layer (prefix-style)
                  PROMPT + 2 * 768 + 2,  # the head included
                  100, 768,  # the tokens, or one vector
                  float(PROMPT)):
        fails_quietly(lambda wrong=wrong: ch10.check_prompt_count(wrong), PROMPT, f"{PROMPT:,}")


def peft_like(P: int = 3):
    """What the check sees in the chapter, built on a tiny BERT: PEFT's (B, P+T, H) states (the encoder run on
    [prompt; word embeddings] with P ones in front of the mask) and ftlib's pooled features of the same batch."""
    model = make_model()
    prompted = apply_prompt_tuning(make_model(), num_tokens=P).eval()
    prompt = prompted.prompt_encoder.prompt_embeddings.detach()  # (P, H)
    batch = make_batch()
    ids, mask = batch["input_ids"], batch["attention_mask"]
    B = ids.shape[0]
    with torch.no_grad():
        embeds = model.encoder.get_input_embeddings()(ids)  # (B, T, H)
        x0 = torch.cat([prompt.expand(B, *prompt.shape), embeds], 1)
        wide = torch.cat([torch.ones(B, P, dtype=mask.dtype), mask], 1)
        states = model.encoder(inputs_embeds=x0, attention_mask=wide).last_hidden_state  # (B, P+T, H)
        features = prompted.features(input_ids=ids, attention_mask=mask)  # (B, H)
    return states, mask, features


def pool_right(states, attention_mask, P):
    real = states[:, P:]
    m = attention_mask.unsqueeze(-1).to(real.dtype)
    return (real * m).sum(1) / m.sum(1)


def pool_prompt_too(states, attention_mask, P):  # averages the prompt positions with the real tokens
    B = states.shape[0]
    m = torch.cat([torch.ones(B, P), attention_mask.float()], 1).unsqueeze(-1)
    return (states * m).sum(1) / m.sum(1)


def pool_ignores_mask(states, attention_mask, P):  # padded positions in the mean
    return states[:, P:].mean(1)


def pool_first_T(states, attention_mask, P):  # the prompt kept, the last P real tokens dropped
    return pool_right(states[:, :-P], attention_mask, 0)


def pool_hard_coded(states, attention_mask, P):  # the chapter's P = 20 written in: no real tokens left here
    return pool_right(states, attention_mask[:, 20:], 20)


def test_pool_real_right_and_wrong():
    states, mask, features = peft_like()
    assert ch10.check_pool_real(pool_right, states, mask, features) is None
    for wrong in (pool_prompt_too, pool_ignores_mask, pool_first_T, pool_hard_coded,
                  lambda s, m, P: s[:, P:], lambda s, m, P: "features"):
        fails_quietly(lambda wrong=wrong: ch10.check_pool_real(wrong, states, mask, features), "states[:, P:]")


def test_pool_real_hints_name_the_mistake():
    states, mask, features = peft_like()
    assert "prompt positions" in str(fails_quietly(lambda: ch10.check_pool_real(pool_prompt_too, states, mask, features)))
    assert "padded" in str(fails_quietly(lambda: ch10.check_pool_real(pool_ignores_mask, states, mask, features)))


def test_pool_real_needs_a_padded_batch():
    states, mask, features = peft_like()
    fails_quietly(lambda: ch10.check_pool_real(pool_right, states[:1], mask[:1], features[:1]))  # row 0 is unpadded


def nearest(prompt, words):
    sims = F.normalize(prompt, dim=-1) @ F.normalize(words, dim=-1).T
    best, ids = sims.max(dim=-1)
    return ids.tolist(), best.mean().item()


@pytest.mark.parametrize("near_words", [False, True])
def test_nearest_words_judged_on_the_students_own_mean(near_words):
    g = torch.Generator().manual_seed(0)
    words = torch.randn(50, 64, generator=g)
    prompt = words[[3, 7, 7, 41]] + 0.1 * torch.randn(4, 64, generator=g) if near_words \
        else torch.randn(4, 64, generator=g)
    ids, mean = nearest(prompt, words)
    readable = mean > ch10.READABLE
    assert readable == near_words  # random 64-dim vectors are not near words; perturbed words are
    assert ch10.check_nearest_words(ids, mean, readable, prompt, words) is None
    assert ch10.check_nearest_words(torch.tensor(ids), mean, readable, prompt, words) is None
    fails_quietly(lambda: ch10.check_nearest_words(ids, mean, not readable, prompt, words), str(readable))
    fails_quietly(lambda: ch10.check_nearest_words(ids, mean, int(readable), prompt, words))
    by_dot = (prompt @ words.T).argmax(-1).tolist()  # largest dot product, not cosine
    if by_dot != ids:
        fails_quietly(lambda: ch10.check_nearest_words(by_dot, mean, readable, prompt, words), ids)
    by_distance = torch.cdist(prompt, words).argmin(-1).tolist()
    if by_distance != ids:
        fails_quietly(lambda: ch10.check_nearest_words(by_distance, mean, readable, prompt, words), ids)
    fails_quietly(lambda: ch10.check_nearest_words(ids[:-1], mean, readable, prompt, words))
    fails_quietly(lambda: ch10.check_nearest_words([i + 1 for i in ids], mean, readable, prompt, words))
    fails_quietly(lambda: ch10.check_nearest_words(ids, mean + 0.01, readable, prompt, words), f"{mean:.3f}")


def test_nearest_words_wrong_answers_on_a_word_embedding_table_where_dot_and_cosine_differ():
    words = torch.tensor([[1.0, 0.0], [10.0, 10.0], [0.0, 1.0]])
    prompt = torch.tensor([[1.0, 0.1], [0.1, 1.0]])
    ids, mean = nearest(prompt, words)
    assert ids == [0, 2]
    assert ch10.check_nearest_words(ids, mean, mean > 0.5, prompt, words) is None
    fails_quietly(lambda: ch10.check_nearest_words([1, 1], mean, mean > 0.5, prompt, words))  # dot product
    wrong_mean = F.cosine_similarity(prompt, words[[1, 1]]).mean().item()
    fails_quietly(lambda: ch10.check_nearest_words(ids, wrong_mean, wrong_mean > 0.5, prompt, words))
