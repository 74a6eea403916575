"""Evaluation of a run: greedy answers on the validation split, shard merging, curves."""
