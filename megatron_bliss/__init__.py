"""megatron_bliss: LLM pretraining with model-based data selection.

Layout (dependencies point downwards only):

- ``data/``      corpora -> Megatron indexed shards, the sequence pool, training datasets
- ``models/``    Pythia / LLaMA presets built on transformers model classes
- ``kernels/``   chunked linear+cross-entropy, fused KL (pure torch + optional Triton)
- ``engine/``    DeepSpeed ZeRO trainer, checkpoints, schedules, metrics, HF export
- ``selection/`` BLISS, Influence Distillation, MATES and baselines behind one interface
- ``eval/``      lm-eval-harness wrapper and reports
- ``pipeline/``  wires engine, selectors and evaluation into the multi-round loop
- ``cli.py``     parses arguments and calls the above
"""

__version__ = "0.1.0"
