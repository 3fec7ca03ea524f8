"""Training data: one module per source format, each yielding ``training.collate.Sample``."""
