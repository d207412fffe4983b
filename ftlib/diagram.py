"""One BERT layer drawn with matplotlib, highlighting where each fine-tuning method enters (no image files).

    from ftlib.diagram import draw_bert_layer
    draw_bert_layer("lora")        # any name of ftlib.strategies.STRATEGIES, or "prefix", "prompt", None ...

Orange boxes train; grey boxes stay frozen; dashed boxes are what the method adds to the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import matplotlib.pyplot as plt
from matplotlib.patches import FancyBboxPatch, Patch

TRAINED, FROZEN, NEUTRAL, ADDED_EDGE = "#f4a259", "#e6e6e6", "white", "#c0392b"
LAYER_BOXES = ("query", "key", "value", "attn_output", "ln1", "ffn_in", "ffn_out", "ln2")
WEIGHTS = ("embeddings", *LAYER_BOXES)  # every box with parameters in the pre-trained encoder
LINEAR = ("query", "key", "value", "attn_output", "ffn_in", "ffn_out")


@dataclass(frozen=True)
class Box:
    x: float  # centre
    y: float
    w: float
    h: float
    text: str
    optional: bool = False  # added by a method: drawn only when that method is shown
    has_weights: bool = True  # attention scores and pooling have no parameters


BOXES: dict[str, Box] = {
    "embeddings": Box(5.6, 1.2, 4.6, 0.8, "embeddings\nword + position, LayerNorm"),
    "prompt": Box(1.75, 1.2, 2.3, 0.62, "soft prompt", optional=True),
    "query": Box(2.0, 2.75, 1.7, 0.6, "query  $W_q$"),
    "key": Box(5.0, 2.75, 1.7, 0.6, "key  $W_k$"),
    "value": Box(8.0, 2.75, 1.7, 0.6, "value  $W_v$"),
    "lora_q": Box(3.45, 2.75, 0.95, 0.6, "$BA$", optional=True),
    "lora_v": Box(9.45, 2.75, 0.95, 0.6, "$BA$", optional=True),
    "prefix_k": Box(5.0, 3.5, 2.0, 0.56, "prefix keys", optional=True),
    "prefix_v": Box(8.0, 3.5, 2.0, 0.56, "prefix values", optional=True),
    "ia3_k": Box(5.0, 3.5, 1.3, 0.5, r"$\times\, \ell_k$", optional=True),
    "ia3_v": Box(8.0, 3.5, 1.3, 0.5, r"$\times\, \ell_v$", optional=True),
    "attention": Box(5.0, 4.3, 6.6, 0.58, r"softmax$(QK^\top/\sqrt{d})\,V$, 12 heads", has_weights=False),
    "attn_output": Box(5.0, 5.2, 3.4, 0.58, "output projection  $W_o$"),
    "adapter_attn": Box(5.0, 5.95, 2.6, 0.56, "adapter", optional=True),
    "ln1": Box(5.0, 6.7, 3.4, 0.55, "add & LayerNorm"),
    "ffn_in": Box(5.0, 7.6, 4.4, 0.58, "feed-forward  $W_1$, GELU"),
    "ia3_ff": Box(5.0, 8.3, 1.3, 0.5, r"$\times\, \ell_{ff}$", optional=True),
    "ffn_out": Box(5.0, 9.0, 4.4, 0.58, "feed-forward  $W_2$"),
    "adapter_ffn": Box(5.0, 9.75, 2.6, 0.56, "adapter", optional=True),
    "ln2": Box(5.0, 10.5, 3.4, 0.55, "add & LayerNorm"),
    "pooling": Box(5.0, 11.65, 3.0, 0.5, "mean pooling", has_weights=False),
    "head": Box(5.0, 12.45, 3.4, 0.55, "classification head"),
}
FLOW = [("embeddings", "query"), ("embeddings", "key"), ("embeddings", "value"), ("query", "attention"),
        ("key", "attention"), ("value", "attention"), ("attention", "attn_output"), ("attn_output", "ln1"),
        ("ln1", "ffn_in"), ("ffn_in", "ffn_out"), ("ffn_out", "ln2"), ("ln2", "pooling"), ("pooling", "head")]


@dataclass(frozen=True)
class Highlight:
    title: str
    trained: dict[str, str]  # box -> short note drawn under its name ("" for none)
    caption: str = ""
    frozen_notes: dict[str, str] = field(default_factory=dict)  # notes on boxes that stay frozen


def _every(note: str, boxes=WEIGHTS) -> dict[str, str]:
    return {b: note for b in boxes}


_LORA = dict(lora_q="rank 8", lora_v="rank 8", head="")
HIGHLIGHTS: dict[str, Highlight] = {
    "full": Highlight("Full fine-tuning: every weight trains", {**_every(""), "head": ""},
                      "every parameter gets gradients and Adam state"),
    "feature-extraction": Highlight("Feature extraction: only the head trains", {"head": "only this"},
                                    "the encoder is frozen in eval mode; its features are computed once and cached"),
    "gradual-unfreezing": Highlight("Gradual unfreezing: thawed from the top down",
                                    {**_every("thawed top layer first", LAYER_BOXES), "embeddings": "thawed last",
                                     "head": "trains from the start"},
                                    "head alone first, then one more layer at a time, embeddings last"),
    "discriminative-lr": Highlight("Discriminative learning rates: smaller further down",
                                   {**_every(r"$\eta\,\xi^{\,L-l}$", LAYER_BOXES),
                                    "embeddings": r"$\eta\,\xi^{\,L}$", "head": r"$\eta$"},
                                   r"layer $l$ of $L$ gets $\eta\,\xi^{L-l}$ ($\xi = 0.95$), slanted-triangular schedule"),
    "lora": Highlight("LoRA: a low-rank update beside $W_q$ and $W_v$", _LORA,
                      r"$h = Wx + \frac{\alpha}{r}BAx$; $W$ frozen, $B = 0$ at init, mergeable into $W$"),
    "prefix": Highlight("Prefix tuning: trained keys and values in every layer",
                        {"prefix_k": "20 per layer", "prefix_v": "20 per layer", "head": ""},
                        "every query also attends to trained prefix vectors; all weights frozen"),
    "prompt": Highlight("Prompt tuning: trained soft tokens at the input only",
                        {"prompt": "20 vectors", "head": ""},
                        "trained vectors prepended to the embedded input tokens; every weight frozen"),
    "adapters": Highlight("Adapters: small bottleneck MLPs after each sub-layer",
                          {"adapter_attn": r"384$\to$64$\to$384", "adapter_ffn": r"384$\to$64$\to$384", "head": ""},
                          "Houlsby placement: after each sub-layer's projection, before add & LayerNorm"),
    "bitfit": Highlight("BitFit: only the bias terms train", {**_every("biases only"), "head": ""},
                        "every weight matrix frozen; the bias vectors of all layers train"),
    "ln-tuning": Highlight("LayerNorm tuning: only the LayerNorm gains and biases train",
                           {"embeddings": "its LayerNorm only", "ln1": "", "ln2": "", "head": ""},
                           "every weight matrix frozen"),
    "ia3": Highlight("(IA)$^3$: learned vectors rescale keys, values and the FFN",
                     {"ia3_k": "", "ia3_v": "", "ia3_ff": "", "head": ""},
                     r"element-wise scales $\ell$ initialised to 1 (the model starts unchanged); mergeable"),
}
ALIASES = {
    "prefix-tuning": ("prefix", {}), "prompt-tuning": ("prompt", {}),
    "lora-rs": ("lora", {"title": "rsLoRA: LoRA scaled by $\\alpha/\\sqrt{r}$"}),
    "lora-plus": ("lora", {"title": "LoRA+: $B$ learns 16 times faster than $A$"}),
    "pissa": ("lora", {"title": "PiSSA: $A$, $B$ from the top singular vectors of $W$"}),
    "dora": ("lora", {"title": "DoRA: LoRA on the direction, a trained magnitude"}),
    "qlora": ("lora", {"title": "QLoRA: LoRA over a 4-bit NF4 base",
                       "frozen_notes": _every("4-bit NF4", LINEAR)}),
}


def highlight_for(name: str | None) -> Highlight:
    """The highlight spec for a method name (a registry name, a short name, or None for the bare layer)."""
    if name is None:
        return Highlight("A BERT encoder layer (all-MiniLM-L6-v2 stacks 6, hidden size 384)", {})
    if not isinstance(name, str):
        raise TypeError(f"highlight must be a strategy name (str) or None, got {type(name).__name__}")
    if name in HIGHLIGHTS:
        return HIGHLIGHTS[name]
    if name in ALIASES:
        base, changes = ALIASES[name]
        spec = HIGHLIGHTS[base]
        return Highlight(changes.get("title", spec.title), spec.trained, spec.caption,
                         changes.get("frozen_notes", spec.frozen_notes))
    known = sorted({*HIGHLIGHTS, *ALIASES})
    raise ValueError(f"no diagram for {name!r}; choose one of {', '.join(known)} or None "
                     "(a new strategy needs an entry in ftlib.diagram.HIGHLIGHTS or ALIASES)")


def _draw_box(ax, name: str, box: Box, spec: Highlight) -> None:
    note = spec.trained.get(name, spec.frozen_notes.get(name))
    color = TRAINED if name in spec.trained else FROZEN if box.has_weights else NEUTRAL
    patch = FancyBboxPatch((box.x - box.w / 2, box.y - box.h / 2), box.w, box.h,
                           boxstyle="round,pad=0.02,rounding_size=0.08", facecolor=color,
                           edgecolor=ADDED_EDGE if box.optional else "#555555",
                           linestyle="--" if box.optional else "-", linewidth=1.4 if box.optional else 0.9,
                           gid=name, zorder=2)
    ax.add_patch(patch)
    lines = box.text.count("\n") + 1
    ax.text(box.x, box.y + (0.1 if note else 0) + (0.04 if note and lines > 1 else 0), box.text, ha="center", va="center", fontsize=8.5,
            color="#222222" if color != FROZEN else "#555555", zorder=3)
    if note:
        ax.text(box.x, box.y - box.h / 2 + 0.11, note, ha="center", va="center", fontsize=6.8,
                style="italic", color="#7a2e00" if name in spec.trained else "#555555", zorder=3)


def _arrow(ax, a: Box, b: Box) -> None:
    ax.annotate("", xy=(b.x if abs(b.x - a.x) > 2 else a.x, b.y - b.h / 2), xytext=(a.x, a.y + a.h / 2),
                arrowprops=dict(arrowstyle="-|>", color="#777777", lw=0.8, shrinkA=1, shrinkB=1), zorder=1)


def draw_bert_layer(highlight: str | None = None, ax=None):
    """Draw one encoder layer of BERT with the parts `highlight` trains or adds; return the Axes.

    The highlighted box names are on `ax.highlighted` (box -> note), for tests and captions."""
    spec = highlight_for(highlight)
    if ax is None:
        _, ax = plt.subplots(figsize=(6.4, 8.2))
    shown = {n: b for n, b in BOXES.items() if not b.optional or n in spec.trained}
    # the repeated encoder layer and its residual connections
    ax.add_patch(FancyBboxPatch((0.35, 2.2), 9.95, 8.75, boxstyle="round,pad=0.02,rounding_size=0.2",
                                facecolor="#f7f9fc", edgecolor="#8899aa", linewidth=1.0, zorder=0))
    ax.text(0.55, 10.78, "encoder layer  ×6", fontsize=8.5, color="#556677", va="center")
    for top, name in [(6.7, "ln1"), (10.5, "ln2")]:
        bottom = 2.35 if name == "ln1" else 7.05
        ax.annotate("", xy=(BOXES[name].x - BOXES[name].w / 2, top), xytext=(0.75, top),
                    arrowprops=dict(arrowstyle="-|>", color="#99aabb", lw=0.8), zorder=1)
        ax.plot([0.75, 0.75], [bottom, top], color="#99aabb", lw=0.8, zorder=1)
        ax.plot([0.75, 5.0], [bottom, bottom], color="#99aabb", lw=0.8, zorder=1)
    ax.text(0.62, 4.6, "residual", rotation=90, fontsize=7, color="#8899aa", va="center", ha="right")
    for a, b in FLOW:
        _arrow(ax, BOXES[a], BOXES[b])
    if "prompt" in shown:
        _arrow(ax, BOXES["prompt"], BOXES["query"])
    for name, box in shown.items():
        _draw_box(ax, name, box, spec)
    ax.text(5.6, 0.22, "input tokens", ha="center", va="center", fontsize=8.5, color="#555555")
    _arrow(ax, Box(5.6, 0.38, 1, 0.0, ""), BOXES["embeddings"])
    ax.set_title(spec.title, fontsize=11)
    if spec.caption:
        ax.text(5.2, 13.25, spec.caption, ha="center", va="center", fontsize=7.5, color="#444444", wrap=True)
    ax.legend(handles=[Patch(facecolor=TRAINED, edgecolor="#555555", label="trained"),
                       Patch(facecolor=FROZEN, edgecolor="#555555", label="frozen"),
                       Patch(facecolor="white", edgecolor=ADDED_EDGE, linestyle="--", label="added by the method")],
              loc="lower center", bbox_to_anchor=(0.5, -0.06), ncol=3, fontsize=7.5, frameon=False)
    ax.set(xlim=(0, 10.5), ylim=(0, 13.6))
    ax.set_aspect("equal")
    ax.axis("off")
    ax.highlighted = dict(spec.trained)
    return ax
