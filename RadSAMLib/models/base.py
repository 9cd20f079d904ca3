"""The one interface every 2D promptable model backend implements.

Set an image once (``encode``), prompt it many times (``decode``): the expensive image
encoder runs once per slice, the light prompt encoder + mask decoder once per prompt.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..preprocess import mask_prompt_logits


@dataclass
class ModelInfo:
    name: str                   # e.g. "litemedsam", "sam_vit_b", "radsam"
    input_size: int             # square input frame (pixels)
    weights: str                # path of the weights file(s) loaded
    sha256: str                 # of the weights file (the base's for a delta checkpoint)
    mask_prompt_trained: bool   # was it trained to take a mask prompt?
    default_strategy: str       # propagation strategy the benchmark found best for it
    extra: dict = field(default_factory=dict)


class SamFamilyModel(nn.Module):
    """A SAM-style model: image encoder + prompt encoder + mask decoder.

    Shapes (S = ``input_size``, E = embedding side, 64 for all bundled models):
      * ``encode(images)``: ``(B, 3, S, S)`` float in [0, 1] -> ``(B, 256, E, E)``.
      * ``decode(embedding, ...)``: one embedding ``(1, 256, E, E)`` plus prompts in
        model-frame coordinates -> ``(logits (4, 4E, 4E), scores (4,))``. Index 0 is the
        single-mask (primary) output, 1..3 SAM's three alternatives; ``scores`` are the
        predicted IoUs. ``4E`` is 256: the model frame at ``256 / S`` scale.
    """

    def __init__(self, image_encoder, prompt_encoder, mask_decoder, info: ModelInfo,
                 pixel_mean=None, pixel_std=None):
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.info = info
        # SAM ViT models expect ImageNet-normalised 0..255 input; LiteMedSAM takes [0, 1].
        self._norm = pixel_mean is not None
        if self._norm:
            self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(1, 3, 1, 1), persistent=False)
            self.register_buffer("pixel_std", torch.tensor(pixel_std).view(1, 3, 1, 1), persistent=False)

    @property
    def input_size(self) -> int:
        return self.info.input_size

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def mask_input_size(self) -> int:
        return int(self.prompt_encoder.mask_input_size[0])

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        if self._norm:
            return (images * 255.0 - self.pixel_mean) / self.pixel_std
        return images

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, torch.float32)
        return self.image_encoder(self.normalize(images))

    def prompt_embeddings(self, box=None, points=None, labels=None, mask=None):
        """Prompts in model-frame coordinates -> the prompt encoder's ``sparse (1, N, 256)``
        and ``dense (1, 256, E, E)`` embeddings (the one place prompts become tensors)."""
        dev = self.device
        pts = None
        if points is not None and len(points):
            coords = torch.as_tensor(points, dtype=torch.float32, device=dev).reshape(1, -1, 2)
            labs = torch.as_tensor(labels, dtype=torch.float32, device=dev).reshape(1, -1)
            pts = (coords, labs)
        boxes = None if box is None else torch.as_tensor(box, dtype=torch.float32, device=dev).reshape(1, 4)
        masks = None
        if mask is not None:
            masks = mask_prompt_logits(torch.as_tensor(mask, dtype=torch.float32, device=dev)).reshape(
                1, 1, self.mask_input_size, self.mask_input_size)
        if pts is None and boxes is None and masks is None:
            raise ValueError("decode needs at least one prompt")
        return self.prompt_encoder(points=pts, boxes=boxes, masks=masks)

    def prompt_batch(self, prompts):
        """Several prompts (dicts of :meth:`prompt_embeddings`'s arguments) -> ``sparse
        (B, N, 256)`` and ``dense (B, 256, E, E)``, to be decoded in one call. A prompt
        without a mask gets the prompt encoder's "no mask" dense embedding, exactly as it
        would alone; every prompt must give the same number of tokens
        (:func:`prompt_tokens`): a padded token would change the answer."""
        parts = [self.prompt_embeddings(**p) for p in prompts]
        if len({int(s.shape[1]) for s, _ in parts}) > 1:
            raise ValueError("prompts with different numbers of tokens cannot share a decoder call")
        return torch.cat([s for s, _ in parts]), torch.cat([d for _, d in parts])

    def decode(self, embedding: torch.Tensor, box=None, points=None, labels=None, mask=None):
        """Decode one embedding with any mix of prompts (model-frame coordinates).

        ``box``: ``(4,)`` x0 y0 x1 y1; ``points``: ``(N, 2)`` x y; ``labels``: ``(N,)`` 1/0;
        ``mask``: ``(M, M)`` [0, 1] mask in the model frame at ``mask_input_size``.
        Gradients flow (training uses this); wrap in ``torch.no_grad()`` for inference.
        """
        logits, scores = self.decode_batch(embedding, [dict(box=box, points=points, labels=labels, mask=mask)])
        return logits[0], scores[0]

    def decode_batch(self, embedding: torch.Tensor, prompts):
        """Decode one embedding with several prompts in one mask-decoder call: ``prompts``
        a list of dicts of :meth:`decode`'s keyword arguments, all with the same number of
        tokens (:func:`prompt_tokens`). Returns ``logits (B, 4, 4E, 4E)``, ``scores (B, 4)``,
        row ``b`` equal (to float rounding) to ``decode(embedding, **prompts[b])``."""
        emb = embedding.to(self.device, torch.float32)
        sparse, dense = self.prompt_batch(prompts)
        return self.mask_decoder.predict_masks(
            image_embeddings=emb,   # SAM's decoder repeats the one image per prompt
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
        )


def prompt_tokens(box=None, points=None) -> int:
    """Sparse tokens SAM's prompt encoder makes of a prompt: one per point, two for a box,
    and a padding point when there are points but no box (prompts decoded together must
    have the same count)."""
    n = 0 if points is None else len(points)
    return n + (2 if box is not None else (1 if n else 0))
