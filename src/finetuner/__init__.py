"""Fine-tune pretrained image classifiers in a reproducible DVC pipeline."""
__version__ = "0.1.0"
