"""Batched decoding and the loss.

``decode_batch`` is :meth:`RadSAMLib.models.base.SamFamilyModel.decode` for a batch of
embeddings, each with its own prompt (same prompt kind across the batch); it calls the
same prompt encoder / mask decoder with the same mask-prompt encoding
(``mask_prompt_logits``), and a test checks it equals ``decode`` sample by sample.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from RadSAMLib.preprocess import mask_prompt_logits


def decode_batch(model, emb, box=None, points=None, labels=None, mask=None):
    """``emb`` ``(B, 256, 64, 64)``; ``box`` ``(B, 4)``; ``points`` ``(B, N, 2)``; ``labels``
    ``(B, N)``; ``mask`` ``(B, M, M)`` in [0, 1] -> logits ``(B, 4, 256, 256)``, iou ``(B, 4)``."""
    dev = model.device
    pts = None
    if points is not None:
        pts = (points.to(dev, torch.float32), labels.to(dev, torch.float32))
    boxes = None if box is None else box.to(dev, torch.float32).reshape(-1, 4)
    masks = None
    if mask is not None:
        masks = mask_prompt_logits(mask.to(dev, torch.float32)).unsqueeze(1)
    sparse, dense = model.prompt_encoder(points=pts, boxes=boxes, masks=masks)
    return model.mask_decoder.predict_masks(
        image_embeddings=emb.to(dev, torch.float32),
        image_pe=model.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
    )


def seg_loss(logits, target):
    """Per-sample soft Dice + BCE: ``logits`` ``(B, K, H, W)``, ``target`` ``(B, H, W)`` -> ``(B, K)``."""
    t = target.unsqueeze(1).expand_as(logits)
    p = torch.sigmoid(logits)
    inter = (p * t).flatten(2).sum(-1)
    dice = 1 - (2 * inter + 1) / (p.flatten(2).sum(-1) + t.flatten(2).sum(-1) + 1)
    bce = F.binary_cross_entropy_with_logits(logits, t, reduction="none").flatten(2).mean(-1)
    return dice + bce


def true_iou(logits, target):
    """IoU of each thresholded output with the target: ``(B, K)``."""
    pred = logits > 0
    t = target.unsqueeze(1).bool()
    inter = (pred & t).flatten(2).sum(-1).float()
    union = (pred | t).flatten(2).sum(-1).float()
    return inter / union.clamp(min=1)


def loss_fn(logits, iou_pred, target, alt_weight=0.5, iou_weight=1.0):
    """Primary (index 0) Dice+BCE; + ``alt_weight`` * the best of the 3 alternatives (SAM's
    multimask rule: only the alternative closest to the target learns, so they stay
    diverse); + ``iou_weight`` * MSE of the IoU head. Returns (loss, parts dict)."""
    logits, iou_pred, target = logits.float(), iou_pred.float(), target.float()
    per = seg_loss(logits, target)
    primary = per[:, 0].mean()
    alt = per[:, 1:].min(dim=1).values.mean()
    iou = F.mse_loss(iou_pred, true_iou(logits.detach(), target))
    loss = primary + alt_weight * alt + iou_weight * iou
    return loss, {"primary": primary.item(), "alt": alt.item(), "iou_mse": iou.item()}
