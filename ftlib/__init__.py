"""ftlib: fine-tuning strategies for pre-trained transformers, each small, tested and explained."""

__version__ = "0.1.0"

# Shortcuts for fine-tuning on your own data, imported on first use so `import ftlib` stays light.
_EXPORTS = {
    "from_csv": "data", "from_lists": "data", "split_dataset": "data", "make_loader": "data",
    "build_classifier": "models", "fit": "train", "evaluate": "train", "predict_texts": "predict",
    "save_task": "task", "load_task": "task", "train_strategy": "experiment",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'ftlib' has no attribute {name!r}")
