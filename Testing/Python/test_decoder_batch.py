"""A slice's prompts asked in one decoder call give the answers of one call per prompt:
hybrid propagation's mask+box and box prompts, and a correction click's prompts, on real
abdominal CT slices (the eager decoder; masks identical, logits to float rounding)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import ABDOMEN_ORGANS
from RadSAMLib.clicks import ClickConfig, edit_slice
from RadSAMLib.config import RadSAMConfig
from RadSAMLib.models.base import prompt_tokens
from RadSAMLib.propagation import Strategy
from RadSAMLib.prompts import SlicePrompt, box_of_mask

SLICES = (6, 15, 24)


@pytest.fixture(scope="module")
def engines(model, abdomen):
    """(batched, one call per prompt) eager-decoder engines sharing one set of embeddings;
    ``batched.batch_calls`` counts its batched decoder calls."""
    from RadSAMLib.engine import SliceEngine
    batched = SliceEngine(model, abdomen[1], axis=0, decoder_backend="eager")
    single = SliceEngine(model, abdomen[1], axis=0, decoder_backend="eager",
                         config=RadSAMConfig(decoder_batch=False))
    single.share_embeddings(batched)
    batched.encode_slices(SLICES)
    assert single.decode_batch_fn is None and batched.decode_batch_fn is not None
    calls = batched.batch_calls = []
    inner = batched.decode_batch_fn
    batched.decode_batch_fn = lambda emb, prompts: calls.append(len(prompts)) or inner(emb, prompts)
    return batched, single


def organs(abdomen, k):
    lab = abdomen[2][k]
    return {name: lab == v for v, name in ABDOMEN_ORGANS.items() if (lab == v).sum() >= 10}


def same(a, b):
    assert np.array_equal(a.masks, b.masks)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
    np.testing.assert_allclose(a.logits, b.logits, atol=1e-3)


def test_prompt_tokens_is_what_the_prompt_encoder_makes(model):
    box, pts, labs = np.array([10.0, 20, 90, 120]), np.array([[40.0, 50], [60, 70]]), np.array([1.0, 0])
    mask = np.zeros((256, 256), np.float32)
    for kw in (dict(box=box), dict(points=pts, labels=labs), dict(box=box, points=pts, labels=labs),
               dict(points=pts[:1], labels=labs[:1], mask=mask), dict(box=box, mask=mask)):
        with torch.no_grad():
            sparse, _ = model.prompt_embeddings(**kw)
        assert sparse.shape[1] == prompt_tokens(kw.get("box"), kw.get("points")), kw


def test_hybrid_prompts_share_one_call_and_answer_as_alone(engines, abdomen):
    batched, single = engines
    hybrid = Strategy.parse("hybrid:5")
    cases = [(k, name, prev) for k in SLICES for name, prev in organs(abdomen, k).items()]
    cases = cases[::max(1, len(cases) // 3)][:3]     # three organs across the volume
    assert len({name for _, name, _ in cases}) >= 2
    for n, (k, name, prev) in enumerate(cases):
        prompts = hybrid.candidates(prev, batched.frame.scale)
        before = len(batched.batch_calls)
        same(batched.predict_best(k, prompts), single.predict_best(k, prompts))
        assert batched.batch_calls[before:] == [2], name     # one decoder call for both prompts
        if n == 0:   # every answer, not only the winner
            for a, b in zip(batched.predict_many(k, prompts), single.predict_many(k, prompts)):
                same(a, b)


def test_correction_click_prompts_share_a_call_where_they_can(engines, abdomen):
    batched, single = engines
    k = 15
    prev = abdomen[2][k] == 5                          # the liver
    ys, xs = np.nonzero(prev)
    inside = (float(xs[len(xs) // 2]), float(ys[len(ys) // 2]))
    cfg = ClickConfig()
    for strategy, anchor, calls in (
            # The user's box on the slice: box+click and box+click+mask prompts (same tokens).
            ("hybrid:5", SlicePrompt(box=box_of_mask(prev, margin=2), points=[inside], labels=[0]), [2]),
            # Mask strategy: click+mask twice; hybrid: box+click+mask and click+mask differ in tokens.
            ("mask", SlicePrompt(points=[inside], labels=[0]), [2]),
            ("hybrid:5", SlicePrompt(points=[inside], labels=[0]), [])):
        before = len(batched.batch_calls)
        st = Strategy.parse(strategy)
        a = edit_slice(batched, st, k, anchor, prev, cfg)
        b = edit_slice(single, st, k, anchor, prev, cfg)
        same(a, b)
        assert batched.batch_calls[before:] == calls, strategy
