"""Scaling out: which items each rank or job slice renders, their devices and their group."""
