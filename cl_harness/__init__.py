"""cl-harness: continual-learning experiments on pretrained transformers."""

__version__ = "0.1.0"
