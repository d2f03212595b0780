"""Stage 1, the plan: prompt files read and checked, items with their ids and seeds, sizes."""
