"""Chapter 06's exercise checks: the right answer passes, an injected wrong one fails without naming the answer."""

from __future__ import annotations

import pytest
import torch
from conftest import fails_quietly, make_batch, make_encoder

from ftlib.exercises import ch06
from ftlib.models import SequenceClassifier, encoder_layers
from ftlib.prefix_tuning import apply_prefix_tuning

BAKED = 2 * 12 * 10 * 768  # bert-base, P = 10


def test_baked_size_right_and_wrong():
    assert ch06.check_baked_size(BAKED) is None
    fails_quietly(lambda: ch06.check_baked_size(BAKED // 2), BAKED, f"{BAKED:,}")  # keys only
    fails_quietly(lambda: ch06.check_baked_size(float(BAKED)), BAKED)


def additive_right(attention_mask, P):
    B, T = attention_mask.shape
    visible = torch.cat([torch.ones(B, P, dtype=torch.bool), attention_mask.bool()], dim=1)
    return torch.where(visible, 0.0, torch.finfo(torch.float32).min)[:, None, None, :].expand(B, 1, T, P + T)


def additive_prefix_hidden(attention_mask, P):
    out = additive_right(attention_mask, P).clone()
    out[..., :P] = torch.finfo(torch.float32).min
    return out


def additive_pad_visible(attention_mask, P):
    B, T = attention_mask.shape
    return torch.zeros(B, 1, T, P + T)


def boolean(attention_mask, P):
    return additive_right(attention_mask, P) == 0


def test_additive_mask_against_a_real_eager_mask():
    """The notebook's path: the mask transformers built for an eager model, recorded in PrefixSelfAttention."""
    model = SequenceClassifier(make_encoder(attn_implementation="eager"), 2).eval()
    apply_prefix_tuning(model, prefix_length=3, projection_dim=8)
    grabbed = {}
    hook = encoder_layers(model)[0].attention.self.register_forward_hook(
        lambda m, args, kwargs, out: grabbed.update(mask=kwargs["attention_mask"]), with_kwargs=True)
    batch = make_batch()
    with torch.no_grad():
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    hook.remove()
    assert ch06.check_additive_mask(additive_right, batch["attention_mask"], grabbed["mask"]) is None
    assert ch06.check_additive_mask(additive_right, batch["attention_mask"]) is None  # built without a model
    for wrong in (additive_prefix_hidden, additive_pad_visible, boolean, "not a function"):
        fails_quietly(lambda wrong=wrong: ch06.check_additive_mask(wrong, batch["attention_mask"], grabbed["mask"]))


def _losses(mlp, direct, direct_fast, steps=6):
    return {"mlp, lr 1e-3": [0.7] * (steps - 1) + [mlp], "direct, lr 1e-3": [0.7] * (steps - 1) + [direct],
            "direct, lr 1e-2": [0.7] * (steps - 1) + [direct_fast]}


L, H = 6, 384
DIRECT = 2 * L * 20 * H + 2 * H + 2


@pytest.mark.parametrize("curves, fastest, mlp_helps", [
    (_losses(0.5, 0.6, 0.4), "direct, lr 1e-2", True),
    (_losses(0.3, 0.6, 0.4), "mlp, lr 1e-3", True),
    (_losses(0.65, 0.6, 0.62), "direct, lr 1e-3", False),
])
def test_prefix_experiment_judged_on_the_students_own_curves(curves, fastest, mlp_helps):
    check = ch06.check_prefix_experiment
    assert check(fastest, mlp_helps, DIRECT, curves, n_layers=L, hidden=H) is None
    others = [arm for arm in ch06.ARMS if arm != fastest]
    fails_quietly(lambda: check(others[0], mlp_helps, DIRECT, curves, n_layers=L, hidden=H), fastest)
    fails_quietly(lambda: check(fastest, not mlp_helps, DIRECT, curves, n_layers=L, hidden=H), str(mlp_helps))
    # the head forgotten, or the MLP's parameters counted instead of the baked prefix
    for wrong in (DIRECT - (2 * H + 2), 2569474, str(DIRECT)):
        fails_quietly(lambda wrong=wrong: check(fastest, mlp_helps, wrong, curves, n_layers=L, hidden=H), DIRECT, f"{DIRECT:,}")


def test_prefix_experiment_refuses_malformed_measurements():
    curves = _losses(0.5, 0.6, 0.4)
    check = ch06.check_prefix_experiment
    fails_quietly(lambda: check("direct, lr 1e-2", True, DIRECT, {**curves, "direct, lr 1e-2": [0.5]}, n_layers=L,
                                 hidden=H))
    fails_quietly(lambda: check("direct, lr 1e-2", True, DIRECT, {k: curves[k] for k in ch06.ARMS[:2]}, n_layers=L,
                                 hidden=H))
    nan = {**curves, "mlp, lr 1e-3": [float("nan")] * 6}
    fails_quietly(lambda: check("direct, lr 1e-2", True, DIRECT, nan, n_layers=L, hidden=H))
