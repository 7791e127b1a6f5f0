"""Data: corpora -> indexed shards (``preprocess``), the sequence pool, training datasets.

Knows nothing of models, training or selection.
"""
