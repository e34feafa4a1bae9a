"""oshp: the open, reproducible companion to 'End-to-end One-shot Human Parsing' (EOP-Net) and POPNet."""

__version__ = "0.1.0"
