"""A drop-in replacement for ``SamFamilyModel.decode`` running a faster mask decoder.

Same signature and result as the eager method (``embedding (1, 256, 64, 64)``, prompts in
model-frame coordinates -> ``(logits (4, S', S'), scores (4,))``), for inference only (no
gradients). The prompt encoder runs in PyTorch (it is tiny); the image positional
encoding, which eager ``decode`` recomputes every call, is computed once; the two-way
transformer and upscaling run in ``core`` (ONNX Runtime, eager, or a CUDA graph).
"""
from __future__ import annotations

import torch

from ..preprocess import mask_prompt_logits


class FastDecoder:
    def __init__(self, model, core):
        self.model = model
        self.core = core
        self.backend = core.backend
        self.export_seconds = getattr(core, "export_seconds", 0.0)

    @torch.inference_mode()
    def prompt_embeddings(self, box=None, points=None, labels=None, mask=None):
        """Prompts (model frame) -> ``sparse (1, N, 256)``, ``dense (1, 256, 64, 64)``;
        the same conversion as ``SamFamilyModel.decode``."""
        m = self.model
        dev = m.device
        pts = None
        if points is not None and len(points):
            coords = torch.as_tensor(points, dtype=torch.float32, device=dev).reshape(1, -1, 2)
            labs = torch.as_tensor(labels, dtype=torch.float32, device=dev).reshape(1, -1)
            pts = (coords, labs)
        boxes = None if box is None else torch.as_tensor(box, dtype=torch.float32, device=dev).reshape(1, 4)
        masks = None
        if mask is not None:
            M = m.mask_input_size
            masks = mask_prompt_logits(torch.as_tensor(mask, dtype=torch.float32, device=dev)).reshape(1, 1, M, M)
        if pts is None and boxes is None and masks is None:
            raise ValueError("decode needs at least one prompt")
        return m.prompt_encoder(points=pts, boxes=boxes, masks=masks)

    def __call__(self, embedding, box=None, points=None, labels=None, mask=None):
        sparse, dense = self.prompt_embeddings(box, points, labels, mask)
        logits, scores = self.core(embedding, sparse, dense.contiguous())
        return logits[0], scores[0]
