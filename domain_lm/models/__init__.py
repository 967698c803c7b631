"""Base-model store (offline registry) and the one place that loads models, tokenizers and adapters."""
