"""genie — Genie: Generative Interactive Environments (Bruce et al., ICML 2024) in PyTorch."""

__version__ = "0.1.0"
