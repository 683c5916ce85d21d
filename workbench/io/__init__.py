"""Weights and tokenizers: safetensors (workbench and HF naming), GGUF, and load reports."""
