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

    def decode(self, embedding: torch.Tensor, box=None, points=None, labels=None, mask=None):
        """Decode one embedding with any mix of prompts (model-frame coordinates).

        ``box``: ``(4,)`` x0 y0 x1 y1; ``points``: ``(N, 2)`` x y; ``labels``: ``(N,)`` 1/0;
        ``mask``: ``(M, M)`` [0, 1] mask in the model frame at ``mask_input_size``.
        Gradients flow (training uses this); wrap in ``torch.no_grad()`` for inference.
        """
        emb = embedding.to(self.device, torch.float32)
        sparse, dense = self.prompt_embeddings(box, points, labels, mask)
        logits, scores = self.mask_decoder.predict_masks(
            image_embeddings=emb,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
        )
        return logits[0], scores[0]
