"""The strategy registry: the list of every strategy's Recipe, by name, used by the CLI and compare.

A strategy module that owns its recipe defines RECIPE (see ftlib.lifecycle); the registry only lists them.
"""

from __future__ import annotations

from torch import nn

from . import adapters, full, lora, prefix_tuning
from .bitfit import apply_bitfit
from .discriminative_lr import apply_discriminative_lr, layerwise_param_groups, slanted_triangular
from .dora import apply_dora
from .feature_extraction import apply_feature_extraction
from .gradual_unfreezing import GradualUnfreezing, apply_gradual_unfreezing, even_interval, unfreezing_order
from .ia3 import apply_ia3, ia3_param_groups
from .lifecycle import Recipe
from .ln_tuning import apply_ln_tuning
from .lora_plus import lora_plus_groups
from .pissa import apply_pissa
from .prompt_tuning import apply_prompt_tuning
from .qlora import apply_qlora
from .rslora import apply_rslora
from .train import Callback

__all__ = ["STRATEGIES", "Recipe", "get_recipe"]


def _thaw_evenly(model: nn.Module, total_steps: int) -> list[Callback]:
    """Spread the thawing of every block (layers, then embeddings) evenly over the run.

    The callback works out its interval from the optimizer steps fit plans (at on_train_begin); the
    `total_steps` given here (callers count batches, blind to grad_accum) only previews every/start."""
    every = even_interval(len(unfreezing_order(model)), total_steps)
    return [GradualUnfreezing(every=every, unit="step", start=every, evenly=True)]


STRATEGIES: dict[str, Recipe] = {
    r.name: r
    for r in [
        full.RECIPE,
        Recipe("feature-extraction", apply_feature_extraction, lr=3e-3,
               summary="frozen encoder in eval mode, cached features, head only"),
        Recipe("gradual-unfreezing", apply_gradual_unfreezing, lr=1e-4, callbacks=_thaw_evenly,
               summary="head first, then layers top-down, embeddings last"),
        Recipe("discriminative-lr", apply_discriminative_lr, lr=1e-4,
               groups=lambda model, lr: layerwise_param_groups(model, lr), schedule=slanted_triangular(),
               summary="lr x 0.95 per layer down, slanted-triangular schedule"),
        lora.RECIPE,
        prefix_tuning.RECIPE,
        adapters.RECIPE,
        # beyond the reference text, part 1
        Recipe("bitfit", apply_bitfit, lr=1e-3, summary="only the bias terms train (and the head)"),
        Recipe("ln-tuning", apply_ln_tuning, lr=1e-3, summary="only the LayerNorm gains and biases train"),
        Recipe("ia3", apply_ia3, lr=3e-3, groups=lambda model, lr: ia3_param_groups(model),
               summary="(IA)^3 vectors rescale keys, values and FFN units"),
        Recipe("prompt-tuning", apply_prompt_tuning, lr=3e-2, summary="20 trained soft tokens before the input"),
        # beyond the reference text, part 2: the LoRA family people use today, and QLoRA
        Recipe("lora-rs", apply_rslora, lr=1e-3, summary="LoRA r=8 scaled by alpha/sqrt(r) (rsLoRA)"),
        Recipe("pissa", apply_pissa, lr=1e-3, summary="LoRA r=8 started from W's top singular vectors"),
        Recipe("dora", apply_dora, lr=1e-3, summary="LoRA r=8 plus a trained magnitude per output unit"),
        Recipe("lora-plus", lora.apply_lora, lr=5e-4, groups=lambda model, lr: lora_plus_groups(model, lr, ratio=16),
               summary="LoRA r=8, B at 16x the learning rate of A (LoRA+)"),
        Recipe("qlora", apply_qlora, lr=1e-3, summary="LoRA r=8 on a frozen 4-bit NF4 base (double-quantised)"),
    ]
}


def get_recipe(name: str) -> Recipe:
    """The recipe for a strategy name, or an error listing the names that exist."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose one of: {', '.join(STRATEGIES)}")
    return STRATEGIES[name]
