"""Batched decoding and the loss.

``decode_batch`` is :meth:`RadSAMLib.models.base.SamFamilyModel.decode` for a batch of
embeddings, each with its own prompt (same prompt kind across the batch); it calls the
same prompt encoder / mask decoder with the same mask-prompt encoding
(``mask_prompt_logits``), and a test checks it equals ``decode`` sample by sample.
"""
from __future__ import annotations

import numpy as np
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


def rank_loss(iou_pred, iou_true):
    """Pairwise hinge on the IoU head's ranking, ``(B, K)`` each -> scalar: every output's
    score must trail the truly best output's score by at least their true IoU gap.

    Inference keeps the output with the highest predicted IoU (of a lone point's 4 masks,
    of a click's 8), so only the order matters there; the MSE term spends itself on
    calibration and lets a large enclosing organ outscore the small one a point is in
    (the liver around the gallbladder: docs/benchmark/clicks.md, session 8). Zero when the
    order is right with those margins."""
    best = iou_true.argmax(dim=1, keepdim=True)
    gap = iou_true.gather(1, best) - iou_true
    lead = iou_pred.gather(1, best) - iou_pred
    return F.relu(gap - lead).sum(dim=1).mean()


def loss_fn(logits, iou_pred, target, alt_weight=0.5, iou_weight=1.0, ambiguous=False, rank_weight=0.0):
    """Primary (index 0) Dice+BCE; + ``alt_weight`` * the best of the 3 alternatives (SAM's
    multimask rule: only the alternative closest to the target learns, so they stay
    diverse); + ``iou_weight`` * MSE of the IoU head; + ``rank_weight`` * :func:`rank_loss`.
    ``ambiguous`` (a lone point): the weights swap, the best alternative is the answer (SAM
    answers a point with its 3 masks and picks by predicted IoU) and the primary output
    keeps ``alt_weight``, since a single-output inference path reads it. Returns (loss,
    parts dict)."""
    logits, iou_pred, target = logits.float(), iou_pred.float(), target.float()
    per = seg_loss(logits, target)
    primary = per[:, 0].mean()
    alt = per[:, 1:].min(dim=1).values.mean()
    truth = true_iou(logits.detach(), target)
    iou = F.mse_loss(iou_pred, truth)
    seg = alt + alt_weight * primary if ambiguous else primary + alt_weight * alt
    loss = seg + iou_weight * iou
    parts = {"primary": primary.item(), "alt": alt.item(), "iou_mse": iou.item()}
    if rank_weight:
        rank = rank_loss(iou_pred, truth)
        loss = loss + rank_weight * rank
        parts["rank"] = rank.item()
    return loss, parts


def chosen_output(logits, iou_pred, ambiguous=False):
    """The mask inference would keep, ``(B, H, W)`` logits: the primary output, or for a
    lone point the alternative with the highest predicted IoU."""
    if not ambiguous:
        return logits[:, 0]
    k = 1 + iou_pred[:, 1:].argmax(dim=1)
    return logits[torch.arange(len(logits)), k]


@torch.no_grad()
def correction_rounds(model, emb, batch: dict, rounds: int, rng, deepest_prob: float = 0.5) -> dict:
    """SAM's interactive rounds on a batch, without gradients: ``rounds`` times, decode the
    current prompt, then add one click per sample in the error of that prediction
    (:func:`training.noise.error_click`) and make the prediction the mask prompt. The
    prediction is fed back binary, through ``mask_prompt_logits`` like any mask prompt,
    because that is what inference's edit path gives the model (the slice's current
    mask), not raw logits. The first prompt's box stays (a user's box stays with its slice).
    Returns the prompt of the last round: ``box``, ``points`` ``(B, N, 2)`` (model frame),
    ``labels`` ``(B, N)``, ``mask`` ``(B, M, M)``."""
    from .noise import error_click
    prompt = {k: batch[k] for k in ("box", "points", "labels", "mask") if k in batch}
    target = batch["target"].bool().numpy()
    valid = batch["valid"].numpy()
    ambiguous = bool(batch.get("single_point"))
    size = model.mask_input_size
    for _ in range(rounds):
        logits, iou = decode_batch(model, emb, prompt.get("box"), prompt.get("points"), prompt.get("labels"),
                                   prompt.get("mask"))
        pred = chosen_output(logits, iou, ambiguous).float().cpu()
        ambiguous = False  # with a click and a mask added, the prompt is no longer a lone point
        pred_np = (pred > 0).numpy()
        clicks, labels = [], []
        for n in range(len(pred_np)):
            c = error_click(pred_np[n], target[n], rng, deepest_prob, valid[n])
            if c is None:  # no error and no object in the frame: a negative click anywhere
                c = ((float(rng.integers(valid[n].any(0).sum())), float(rng.integers(valid[n].any(1).sum()))), 0)
            clicks.append(c[0])
            labels.append(c[1])
        pts = torch.as_tensor(np.asarray(clicks, np.float32)).reshape(-1, 1, 2)
        labs = torch.as_tensor(np.asarray(labels, np.float32)).reshape(-1, 1)
        if "points" in prompt:
            pts = torch.cat([prompt["points"].float().cpu(), pts], 1)
            labs = torch.cat([prompt["labels"].float().cpu(), labs], 1)
        mask = torch.as_tensor(pred_np & valid).float()  # inference's mask prompts are empty in the padding
        if mask.shape[-1] != size:
            mask = F.interpolate(mask[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
        prompt.update(points=pts, labels=labs, mask=mask)
    return prompt
