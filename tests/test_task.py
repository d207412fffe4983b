"""Properties of ftlib.task: a saved task reloads to the same outputs, in the strategy's own small format,
and every damaged or missing piece is an error that names the file and the fix."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from conftest import make_encoder
from safetensors.torch import load_file
from transformers import BertTokenizerFast

from ftlib.models import build_classifier
from ftlib.strategies import get_recipe
from ftlib.task import check_checkpoint, load_task, prepare_output, save_task

WORDS = ["good", "great", "nice", "bad", "awful", "dull", "the", "movie", "was", "plot", "a", "it"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
NAMES = ("bad", "good", "meh")


def save_tiny_model(folder: Path) -> Path:
    """A 2-layer BERT (conftest.make_encoder) and a word-piece tokenizer over VOCAB, as save_pretrained writes them."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), model_max_length=64).save_pretrained(folder)
    make_encoder("bert", vocab_size=len(VOCAB)).save_pretrained(folder)
    return folder


def write_reviews(path: Path, n: int = 80, seed: int = 0) -> Path:
    """A small labelled CSV whose label follows one sentiment word."""
    r = random.Random(seed)
    rows = ["text,label"]
    for i in range(n):
        y = i % 2
        words = r.choices(["the", "movie", "was", "plot", "a", "it"], k=3) + [r.choice(WORDS[:3] if y else WORDS[3:6])]
        r.shuffle(words)
        rows.append(f"{' '.join(words)},{'positive' if y else 'negative'}")
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny"))


def trained(tiny_dir: Path, strategy: str, seed: int = 0):
    """A classifier on the tiny model with `strategy` applied and its trainable tensors moved off their init."""
    model, tokenizer = build_classifier(str(tiny_dir), num_labels=len(NAMES))
    get_recipe(strategy).apply(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn(p.shape, generator=g))  # stands in for training
    return model.eval(), tokenizer


def logits(model, tokenizer) -> torch.Tensor:
    enc = tokenizer(["the movie was good", "a dull plot", "it"], padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])


SMALL_FORMAT = {"lora": "lora.safetensors", "full": "model.safetensors", "feature-extraction": "trainable.safetensors",
                "adapters": "trainable.safetensors", "prefix-tuning": "trainable.safetensors",
                "gradual-unfreezing": "model.safetensors", "discriminative-lr": "model.safetensors"}


@pytest.mark.parametrize("strategy", list(SMALL_FORMAT))
def test_round_trip_gives_the_same_outputs(tiny_dir, tmp_path, strategy):
    model, tokenizer = trained(tiny_dir, strategy)
    save_task(tmp_path / "task", model, strategy=strategy, label_names=NAMES, model_name=str(tiny_dir),
              max_length=32, metrics={"test_accuracy": 0.5})
    task = load_task(tmp_path / "task")
    assert torch.allclose(logits(task.model, task.tokenizer), logits(model, tokenizer), atol=1e-6)
    assert task.label_names == NAMES and task.model.label_names == NAMES and not task.model.training
    card = json.loads((tmp_path / "task" / "task.json").read_text())
    assert card["weights"] == SMALL_FORMAT[strategy] and card["strategy"]["name"] == strategy
    assert card["labels"]["mapping"] == {"bad": 0, "good": 1, "meh": 2}
    assert set(card["versions"]) == {"python", "torch", "transformers", "ftlib"}
    assert card["model"]["max_length"] == 32 and card["metrics"] == {"test_accuracy": 0.5}


def test_small_formats_hold_only_what_trained(tiny_dir, tmp_path):
    """LoRA's file holds the lora_* tensors and the head, nothing of the frozen base."""
    model, _ = trained(tiny_dir, "lora")
    save_task(tmp_path / "lora", model, strategy="lora", label_names=NAMES, model_name=str(tiny_dir))
    names = set(load_file(str(tmp_path / "lora" / "lora.safetensors")))
    assert names == {n for n, _ in model.named_parameters() if "lora_" in n or n.startswith("classifier.")}
    settings = json.loads((tmp_path / "lora" / "task.json").read_text())["strategy"]["config"]
    assert settings == {"rank": 8, "alpha": 16, "dropout": 0.0, "targets": ["query", "value"]}


def test_build_classifier_takes_num_labels_from_the_data(tiny_dir):
    from ftlib.data import from_lists, split_dataset

    ds = from_lists([f"t{i}" for i in range(30)], [1, 3, 5] * 10)
    assert build_classifier(str(tiny_dir), data=ds)[0].num_labels == 3
    assert build_classifier(str(tiny_dir), data=split_dataset(ds, (0.8, 0.1, 0.1)))[0].num_labels == 3
    assert build_classifier(str(tiny_dir))[0].num_labels == 2  # the default without data is unchanged
    with pytest.raises(ValueError, match="num_labels=2 but the data has 3 classes; pass one of them, not both"):
        build_classifier(str(tiny_dir), num_labels=2, data=ds)


def test_save_refuses_wrong_label_count(tiny_dir, tmp_path):
    model, _ = trained(tiny_dir, "lora")
    with pytest.raises(ValueError, match="2 label_names for a 3-class model; one per class"):
        save_task(tmp_path / "t", model, strategy="lora", label_names=["a", "b"])


# --- damaged or missing pieces: one error each, naming the file and the fix --------------------------------


def _truncate(folder: Path) -> None:
    f = folder / "lora.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _junk(folder: Path) -> None:
    (folder / "lora.safetensors").write_bytes(b"this is not a safetensors file at all")


def _drop_key(folder: Path) -> None:
    card = json.loads((folder / "task.json").read_text())
    del card["labels"]
    (folder / "task.json").write_text(json.dumps(card))


def _wrong_rank(folder: Path) -> None:
    card = json.loads((folder / "task.json").read_text())
    card["strategy"]["config"]["rank"] = 4
    (folder / "task.json").write_text(json.dumps(card))


def _other_weights(folder: Path) -> None:
    card = json.loads((folder / "task.json").read_text())
    card["strategy"] = {"name": "adapters", "config": {}}
    (folder / "task.json").write_text(json.dumps(card))


DAMAGE = {  # case -> (damage, error type, text the message must contain: the file ... and the fix)
    "truncated weights": (_truncate, ValueError, r"lora\.safetensors is not a readable safetensors.*train the task again"),
    "junk weights file": (_junk, ValueError, r"lora\.safetensors is not a readable safetensors.*train the task again"),
    "missing weights file": (lambda f: (f / "lora.safetensors").unlink(), FileNotFoundError,
                             r"lora\.safetensors is missing; train the task again"),
    "broken JSON": (lambda f: (f / "task.json").write_text('{"format": "ftlib-task/1", '), ValueError,
                    r"task\.json is not valid JSON .*damaged: train the task again"),
    "JSON not an object": (lambda f: (f / "task.json").write_text("[1, 2]"), ValueError,
                           r"task\.json holds a JSON list, not an object; train the task again"),
    "missing key": (_drop_key, ValueError, r"task\.json lacks \['labels'\].*train the task again"),
    "settings differ from file": (_wrong_rank, ValueError,
                                  r"lora\.safetensors does not fit the lora model .*rank.*train the task again"),
    "file of another strategy": (_other_weights, ValueError,
                                 r"lora\.safetensors does not fit the adapters model.*train the task again"),
    "no task.json": (lambda f: (f / "task.json").unlink(), ValueError,
                     r"holds no task\.json, so it is not a saved task; pass the --output folder"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_task_names_the_file_and_fix(tiny_dir, tmp_path, case):
    damage, error, message = DAMAGE[case]
    model, _ = trained(tiny_dir, "lora")
    folder = tmp_path / "task"
    save_task(folder, model, strategy="lora", label_names=NAMES, model_name=str(tiny_dir))
    damage(folder)
    with pytest.raises(error, match=message):
        load_task(folder)


def test_missing_folder_and_missing_base_model(tiny_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no task folder .*nope; pass the --output folder"):
        load_task(tmp_path / "nope")
    model, _ = trained(tiny_dir, "lora")
    save_task(tmp_path / "task", model, strategy="lora", label_names=NAMES, model_name=str(tmp_path / "gone"))
    with pytest.raises(FileNotFoundError, match=r"trained on the model in .*gone, which is gone; restore"):
        load_task(tmp_path / "task")


def test_prepare_output_checks_before_training(tiny_dir, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder; choose a folder path"):
        prepare_output(tmp_path / "file")
    model, _ = trained(tiny_dir, "lora")
    save_task(tmp_path / "task", model, strategy="lora", label_names=NAMES, model_name=str(tiny_dir))
    with pytest.raises(ValueError, match="already holds a trained task; choose another --output or pass --overwrite"):
        prepare_output(tmp_path / "task")
    assert prepare_output(tmp_path / "task", overwrite=True) == tmp_path / "task"
    assert prepare_output(tmp_path / "new" / "deeper").is_dir()


# --- checkpoints checked before a resume -------------------------------------------------------------------


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    """A real checkpoint written by fit (one epoch of the tiny conftest model)."""
    from conftest import make_model, rows_loader

    from ftlib.full import apply_full
    from ftlib.train import fit

    fit(apply_full(make_model()), rows_loader(8), epochs=1, device="cpu", progress=False,
        checkpoint_dir=tmp_path / "ck")
    return tmp_path / "ck"


def _break_json(target: Path) -> None:
    (target / "state.json").write_text("{not json")


def _drop_state_key(target: Path) -> None:
    state = json.loads((target / "state.json").read_text())
    del state["optimizer"]
    (target / "state.json").write_text(json.dumps(state))


CHECKPOINT_DAMAGE = {
    "truncated model file": (lambda t: (t / "model.safetensors").write_bytes((t / "model.safetensors").read_bytes()[:100]),
                             ValueError, r"model\.safetensors is not a readable safetensors"),
    "missing optimizer file": (lambda t: (t / "optimizer.safetensors").unlink(), FileNotFoundError,
                               r"optimizer\.safetensors is missing"),
    "broken state.json": (_break_json, ValueError, r"state\.json is not valid JSON"),
    "state.json lacks a key": (_drop_state_key, ValueError, r"state\.json lacks \['optimizer'\]"),
}


@pytest.mark.parametrize("case", list(CHECKPOINT_DAMAGE))
def test_damaged_checkpoint_names_the_file_and_fix(checkpoint, case):
    damage, error, message = CHECKPOINT_DAMAGE[case]
    target = check_checkpoint(checkpoint)
    assert target.name == "epoch-0001"  # intact: passes
    damage(target)
    with pytest.raises(error, match=message + r".*train without --resume"):
        check_checkpoint(checkpoint)


def test_checkpoint_pointer_to_nowhere(checkpoint):
    (checkpoint / "latest").write_text("epoch-0099")
    with pytest.raises(FileNotFoundError, match=r"points at .*epoch-0099, which is missing; delete"):
        check_checkpoint(checkpoint)
    assert check_checkpoint(checkpoint.parent / "empty") is None  # nothing saved yet: fit says so itself
