"""The multi-round pipeline: wires the engine, a selector and evaluation together.

warm-up (round 0) -> for r = 1..R: select on shard r with the current target -> train the target on
the selection -> (optional decay branch) -> evaluate. Every stage is resumable and skipped when its
outputs exist for the same config (``stages.py``).
"""
