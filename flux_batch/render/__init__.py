"""Stage 3, rendering: prompts encoded, batches denoised and decoded on a schedule."""
