"""Models: named presets built on transformers' GPT-NeoX (Pythia) and LLaMA classes.

Knows nothing of training or selection; checkpoints are plain Hugging Face models.
"""
