"""Input images to the latents a family's pipeline conditions on: each input VAE-encoded once.

An input is read (checked against the hash the plan took), made RGB (plan/inputs.py's rule),
fitted to its item's output size by `sampler.input_fit`, and encoded by the family's own VAE
steps (`Family.encode_reference`), once per (VAE, input bytes, size, fit): not once per k, per
batch or per sweep job. The latents are kept in memory for the process (as prompt embeddings
are) and, with `runtime.embed_cache=DIR`, on disk beside the embeddings, so later runs skip
the VAE's encoder too. Encoding one image at a time keeps an item's latents independent of the
batch it lands in.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from flux_batch import families
from flux_batch.faults import crash_point
from flux_batch.plan.inputs import InputImage, load_rgb

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from flux_batch.plan.items import Item

REFERENCE_CACHE_BYTES = 1 << 30  # latents kept in host memory, first come first kept


def fit(image: Image.Image, width: int, height: int, how: str) -> Image.Image:
    """The picture at exactly width x height: `crop` covers and centre-crops, `pad` fits inside
    and pads with white, `stretch` scales each side."""
    from PIL import Image, ImageOps

    if image.size == (width, height):
        return image
    if how == "crop":
        return ImageOps.fit(image, (width, height), Image.Resampling.LANCZOS)
    if how == "pad":
        return ImageOps.pad(image, (width, height), Image.Resampling.LANCZOS, color=(255, 255, 255))
    return image.resize((width, height), Image.Resampling.LANCZOS)


class ReferenceEncoder:
    """The encoded input images of items, each computed once and kept (memory, then disk)."""

    _store: dict[tuple, torch.Tensor] = {}
    _bytes = 0

    def __init__(self, pipe, identity: str, how: str, disk=None):
        self.pipe = pipe
        self.family = families.of_pipeline(pipe)
        self.identity = identity  # the VAE as it encodes (encoder.encoders_digest of its folder)
        self.how = how  # sampler.input_fit
        self.disk = disk  # embed_cache.EmbedCache, keyed by the VAE's identity
        self.items = 0  # items rendered with inputs
        self.encoded = 0  # inputs the VAE encoded
        self.read = 0  # inputs read back from the disk cache
        self.seconds = 0.0  # spent reading, fitting and encoding

    def latents(self, item: Item) -> list[torch.Tensor]:
        """The item's inputs as latents on the CPU, one tensor per input."""
        s = item.settings
        return [self._one(image, s.width, s.height) for image in item.inputs]

    def stack(self, batch: list[Item]) -> list[list[torch.Tensor]]:
        """The batch's latents on the pipeline's device, per item."""
        device = self.pipe._execution_device
        self.items += len(batch)
        return [[x.to(device) for x in self.latents(item)] for item in batch]

    def _one(self, image: InputImage, width: int, height: int) -> torch.Tensor:
        name = f"{image.sha256} {width}x{height} {self.how}"  # what the disk entry is keyed by
        key = (self.identity, name)
        found = ReferenceEncoder._store.get(key)
        if found is None and self.disk is not None:
            found = (self.disk.load(name, 0) or {}).get("latents")
            self.read += found is not None
        if found is not None:
            self._keep(key, found)
            return found
        self.encoded += 1
        started = time.perf_counter()
        crash_point("input_read")
        latents = self._encode(fit(load_rgb(image), width, height, self.how), width, height)
        self.seconds += time.perf_counter() - started
        self._keep(key, latents)
        if self.disk is not None:
            self.disk.save(name, 0, {"latents": latents})
        return latents

    def _encode(self, picture: Image.Image, width: int, height: int) -> torch.Tensor:
        import torch
        from diffusers.utils.torch_utils import get_module_execution_device

        pipe = self.pipe
        pixels = pipe.image_processor.preprocess(picture, height=height, width=width)
        device = get_module_execution_device(pipe.vae)
        pixels = pixels.to(device, pipe.vae.dtype)
        # on the CPU the VAE encoder's convolutions sum in an order that depends on the thread
        # count: one thread makes an input's latents the same in every process (ranks split
        # the cores), at a cost paid once per input
        threads = torch.get_num_threads()
        if device.type == "cpu":
            torch.set_num_threads(1)
        try:
            return self.family.encode_reference(pipe, pixels).detach().cpu()
        finally:
            torch.set_num_threads(threads)

    @staticmethod
    def _keep(key: tuple, latents: torch.Tensor) -> None:
        if key in ReferenceEncoder._store:
            return
        size = latents.numel() * latents.element_size()
        if ReferenceEncoder._bytes + size <= REFERENCE_CACHE_BYTES:
            ReferenceEncoder._store[key] = latents
            ReferenceEncoder._bytes += size
