"""ftlib.diagram: every strategy in the registry draws, highlights where it enters, and no two look alike."""

from __future__ import annotations

import itertools

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402

from ftlib.diagram import ALIASES, BOXES, HIGHLIGHTS, TRAINED, WEIGHTS, draw_bert_layer, highlight_for  # noqa: E402
from ftlib.strategies import STRATEGIES  # noqa: E402

BRIEF_NAMES = ["lora", "prefix", "adapters", "prompt", "feature-extraction", "bitfit", "ln-tuning", "ia3", "full"]


def drawn(name):
    """(box -> face colour) of every named box on a fresh Axes, and the Axes' highlight record."""
    fig, ax = plt.subplots()
    try:
        draw_bert_layer(name, ax=ax)
        faces = {p.get_gid(): to_hex(p.get_facecolor()) for p in ax.patches if p.get_gid()}
        return faces, ax.highlighted
    finally:
        plt.close(fig)


def trained_boxes(name):
    faces, _ = drawn(name)
    return {box for box, color in faces.items() if color == to_hex(TRAINED)}


@pytest.mark.parametrize("name", sorted({*STRATEGIES, *HIGHLIGHTS, *ALIASES}))
def test_every_registry_strategy_draws_and_highlights_what_it_trains(name):
    """Every registry name (read at test time: a new strategy without a diagram fails here) and every alias."""
    faces, highlighted = drawn(name)
    colored = {box for box, color in faces.items() if color == to_hex(TRAINED)}
    assert colored, f"{name}: nothing highlighted"
    assert colored == set(highlighted), f"{name}: drawn highlight {colored} != recorded {set(highlighted)}"
    assert "head" in colored  # every strategy trains the new head


def test_registry_strategies_look_different():
    specs = {name: highlight_for(name) for name in STRATEGIES}
    for a, b in itertools.combinations(specs, 2):
        assert specs[a].trained != specs[b].trained or specs[a].title != specs[b].title, (a, b)


@pytest.mark.parametrize("a, b", list(itertools.combinations(sorted(HIGHLIGHTS), 2)))
def test_highlighted_boxes_differ_between_methods(a, b):
    assert drawn(a)[1] != drawn(b)[1], f"{a} and {b} highlight the same boxes with the same notes"


@pytest.mark.parametrize("name, expected", [
    ("lora", {"lora_q", "lora_v", "head"}),
    ("prefix", {"prefix_k", "prefix_v", "head"}),
    ("adapters", {"adapter_attn", "adapter_ffn", "head"}),
    ("prompt", {"prompt", "head"}),
    ("feature-extraction", {"head"}),
    ("ia3", {"ia3_k", "ia3_v", "ia3_ff", "head"}),
    ("ln-tuning", {"embeddings", "ln1", "ln2", "head"}),
    ("bitfit", {*WEIGHTS, "head"}),
    ("full", {*WEIGHTS, "head"}),
])
def test_where_each_method_enters(name, expected):
    assert trained_boxes(name) == expected


def test_bitfit_is_marked_as_biases_only_and_frozen_weights_stay_grey():
    assert all("bias" in drawn("bitfit")[1][box] for box in WEIGHTS)
    faces, _ = drawn("lora")
    assert faces["query"] == faces["value"] == to_hex("#e6e6e6")


def test_bare_layer_has_no_highlight_and_no_added_modules():
    faces, highlighted = drawn(None)
    assert highlighted == {} and TRAINED not in faces.values()
    assert set(faces) == {n for n, b in BOXES.items() if not b.optional}


@pytest.mark.parametrize("name", BRIEF_NAMES + ["prefix-tuning", "prompt-tuning", "qlora", "dora", None])
def test_short_and_registry_names_are_accepted(name):
    drawn(name)


def test_unknown_name_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="no diagram for 'loraa'; choose one of .*lora"):
        draw_bert_layer("loraa")
    with pytest.raises(TypeError, match="strategy name"):
        draw_bert_layer(8)


def test_draws_on_a_new_figure_when_no_axes_given():
    ax = draw_bert_layer("lora")
    assert ax.figure is not None and ax.get_title().startswith("LoRA")
    plt.close(ax.figure)
