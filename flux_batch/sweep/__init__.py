"""Sweeps: Hydra multirun jobs and their state, and comparing them (grid, gallery)."""
