"""A drop-in replacement for ``SamFamilyModel.decode`` running a faster mask decoder.

Same signature and result as the eager method (``embedding (1, 256, 64, 64)``, prompts in
model-frame coordinates -> ``(logits (4, S', S'), scores (4,))``), for inference only (no
gradients). The prompt encoder runs in PyTorch (it is tiny); the image positional
encoding, which eager ``decode`` recomputes every call, is computed once; the two-way
transformer and upscaling run in ``core`` (ONNX Runtime, eager, or a CUDA graph).
"""
from __future__ import annotations

import torch


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
        return self.model.prompt_embeddings(box, points, labels, mask)

    def __call__(self, embedding, box=None, points=None, labels=None, mask=None):
        sparse, dense = self.prompt_embeddings(box, points, labels, mask)
        logits, scores = self.core(embedding, sparse, dense.contiguous())
        return logits[0], scores[0]
