"""Self-supervised pretraining of masked-LM and energy-based models (NYU Deep Learning, week 7)."""

__version__ = "0.1.0"
