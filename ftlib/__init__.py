"""ftlib: fine-tuning strategies for pre-trained transformers, each small, tested and explained."""

__version__ = "0.1.0"
