"""A tiny stand-in model for testing propagation LOGIC and coordinate plumbing fast.

It is not a test of segmentation quality (real-model tests do that on real CT). It
"segments" exactly what it is prompted with, in the model frame: the box region, the
mask prompt, or a disc around positive points minus a disc around negative points, so a
test can predict its output exactly and check every coordinate mapping on the way.
"""
from __future__ import annotations

import torch

from RadSAMLib.models.base import ModelInfo


class FakeModel(torch.nn.Module):
    def __init__(self, input_size=256, strategy="mask"):
        super().__init__()
        self._p = torch.nn.Parameter(torch.zeros(1))
        self.info = ModelInfo("fake", input_size, "-", "0" * 64, True, strategy)
        self.encode_calls = 0

    input_size = property(lambda self: self.info.input_size)
    device = property(lambda self: torch.device("cpu"))
    mask_input_size = 256

    def encode(self, images):
        self.encode_calls += images.shape[0]
        return torch.nn.functional.avg_pool2d(images[:, :1], images.shape[-1] // 64).expand(-1, 256, -1, -1)

    def decode(self, embedding, box=None, points=None, labels=None, mask=None):
        S = 256  # output logits frame is 256 for every SAM-family model
        f = self.info.input_size / S
        yy, xx = torch.meshgrid(torch.arange(S, dtype=torch.float64), torch.arange(S, dtype=torch.float64), indexing="ij")
        xx, yy = (xx + 0.5) * f - 0.5, (yy + 0.5) * f - 0.5  # output pixel centres in input coords
        inside = torch.zeros(S, S, dtype=torch.bool)
        if mask is not None:
            inside |= torch.as_tensor(mask) > 0.5
        if box is not None:
            x0, y0, x1, y1 = [float(v) for v in box]
            inside |= (xx >= x0 - 0.5) & (xx <= x1 + 0.5) & (yy >= y0 - 0.5) & (yy <= y1 + 0.5)
        if points is not None:
            for (x, y), lab in zip(points, labels):
                disc = (xx - float(x)) ** 2 + (yy - float(y)) ** 2 <= (6 * f) ** 2
                inside = inside | disc if lab == 1 else inside & ~disc
        logits = torch.where(inside, 8.0, -8.0).float()
        # "Confident" only where the slice has content: lets tests exercise the stop rule.
        conf = 0.9 if float(embedding.float().mean()) > 0 else 0.1
        return logits.expand(4, -1, -1).clone(), torch.tensor([conf, 0.8, 0.7, 0.6])
