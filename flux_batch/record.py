"""The manifest record: the fields flux-batch writes for every image, in their order.

One home for them: the writer fills them (store/writer.py), a prompt file may not carry a column
of the same name (plan/prompts.py), and the gallery shows them first (sweep/gallery.py).
"""

from __future__ import annotations

# Every record has these, in this order; `family` only for a family other than FLUX.1,
# `model_sha256` only for a local transformer file (not a URL), `lora` only when LoRAs are
# applied, `cache` only with step caching, `inputs` only for an item with input images
# ([{"path", "sha256", "copy"}, ...]: copy is the file_name of the run's copy of the input)
# and `input_file_name` with it (the first input's copy: `datasets`' imagefolder loads it as
# the `input` image column), `sha256` last.
FIELDS = (
    "file_name",
    "id",
    "k",
    "prompt",
    "seed",
    "width",
    "height",
    "steps",
    "guidance",
    "negative_prompt",
    "true_cfg",
    "scheduler",
    "model",
    "family",
    "quant",
    "model_sha256",
    "lora",
    "cache",
    "inputs",
    "input_file_name",
    "sha256",
)
