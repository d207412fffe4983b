"""The strategy registry: one name -> how to apply it and how to train it, used by the CLI and compare."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from .adapters import apply_adapters
from .bitfit import apply_bitfit
from .discriminative_lr import apply_discriminative_lr, layerwise_param_groups, slanted_triangular
from .feature_extraction import apply_feature_extraction
from .full import apply_full
from .gradual_unfreezing import GradualUnfreezing, apply_gradual_unfreezing, unfreezing_order
from .ia3 import apply_ia3, ia3_param_groups
from .ln_tuning import apply_ln_tuning
from .lora import apply_lora
from .prefix_tuning import apply_prefix_tuning
from .prompt_tuning import apply_prompt_tuning
from .train import Callback


def _thaw_evenly(model: nn.Module, total_steps: int) -> list[Callback]:
    """Spread the thawing of every block (layers, then embeddings) evenly over the run."""
    every = max(1, total_steps // (len(unfreezing_order(model)) + 1))
    return [GradualUnfreezing(every=every, unit="step", start=every)]


@dataclass(frozen=True)
class Recipe:
    name: str
    apply: Callable[[nn.Module], nn.Module]  # apply_<strategy> with its defaults
    lr: float  # peak learning rate that works for this strategy on MiniLM (set on the quick profile)
    groups: Callable[[nn.Module, float], list[dict]] | None = None  # optimizer groups, if not fit's default
    callbacks: Callable[[nn.Module, int], list[Callback]] = field(default=lambda model, total_steps: [])
    schedule: Callable[[int, int], float] | None = None  # LR multiplier; None = linear warm-up/decay
    summary: str = ""


STRATEGIES: dict[str, Recipe] = {
    r.name: r
    for r in [
        Recipe("full", apply_full, lr=5e-5, summary="every weight trains"),
        Recipe("feature-extraction", apply_feature_extraction, lr=3e-3,
               summary="frozen encoder in eval mode, cached features, head only"),
        Recipe("gradual-unfreezing", apply_gradual_unfreezing, lr=1e-4, callbacks=_thaw_evenly,
               summary="head first, then layers top-down, embeddings last"),
        Recipe("discriminative-lr", apply_discriminative_lr, lr=1e-4,
               groups=lambda model, lr: layerwise_param_groups(model, lr), schedule=slanted_triangular(),
               summary="lr x 0.95 per layer down, slanted-triangular schedule"),
        Recipe("lora", apply_lora, lr=1e-3, summary="rank-8 updates on query and value, base frozen"),
        Recipe("prefix-tuning", apply_prefix_tuning, lr=1e-3, summary="20 trained key/value prefixes per layer"),
        Recipe("adapters", apply_adapters, lr=1e-3, summary="Houlsby bottleneck adapters (64) in every layer"),
        # beyond the reference text, part 1
        Recipe("bitfit", apply_bitfit, lr=1e-3, summary="only the bias terms train (and the head)"),
        Recipe("ln-tuning", apply_ln_tuning, lr=1e-3, summary="only the LayerNorm gains and biases train"),
        Recipe("ia3", apply_ia3, lr=3e-3, groups=lambda model, lr: ia3_param_groups(model),
               summary="(IA)^3 vectors rescale keys, values and FFN units"),
        Recipe("prompt-tuning", apply_prompt_tuning, lr=3e-2, summary="20 trained soft tokens before the input"),
    ]
}


def get_recipe(name: str) -> Recipe:
    """The recipe for a strategy name, or an error listing the names that exist."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose one of: {', '.join(STRATEGIES)}")
    return STRATEGIES[name]
