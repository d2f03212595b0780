"""Scaling out: which items each rank or shard renders, and how they start and finish."""
