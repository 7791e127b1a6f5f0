"""Selection: score every sequence of a candidate shard and keep the most useful fraction.

Methods (BLISS, Influence Distillation, MATES, DSIR, perplexity, random) implement one interface,
``Selector`` in ``base.py``; ``registry.py`` names them; ``rule.py`` turns scores into a selection.
"""
