"""Segmentation quality on real CT with the default model (RadSAMLib.DEFAULT_MODEL: the
bundled fine-tune, with its default strategy).

Prompts are declared as data (the simulated user of the issue: a box on the organ's
largest slice plus its true bottom/top slices); results are checked against the reference
labels with a Dice bound. Every slice is encoded once (the ``abdomen_engine`` fixture).
"""
import numpy as np
import pytest
from scipy import ndimage

from RadSAMLib.prompts import SlicePrompt, box_of_mask
from RadSAMLib.session import Session
from conftest import ABDOMEN_ORGANS, dice

MIN_DICE = 0.85
# The stomach is where models fine-tuned for mask prompts failed (it shrank slice after
# slice, 3D Dice 0.46-0.50) until the shipped ``hybrid`` strategy (docs/benchmark/training.md).
ORGANS = ABDOMEN_ORGANS | {6: "stomach"}


def organ_prompt(label, value):
    gt = label == value
    ks = np.nonzero(gt.any(axis=(1, 2)))[0]
    k = int(gt.sum(axis=(1, 2)).argmax())
    return gt, k, SlicePrompt(box=box_of_mask(gt[k])), (int(ks.min()), int(ks.max()))


@pytest.fixture(scope="module")
def propagated(default_model, abdomen, default_engine):
    """{organ: (session, gt)} after volume-level propagation with the model's default strategy."""
    out = {}
    for value, name in ORGANS.items():
        gt, k, prompt, bounds = organ_prompt(abdomen[2], value)
        s = Session(default_engine)
        s.segment(k, prompt, bounds=bounds)
        out[name] = (s, gt)
    return out


@pytest.mark.parametrize("organ", list(ORGANS.values()))
def test_one_box_segments_the_whole_organ(propagated, organ):
    s, gt = propagated[organ]
    d = dice(s.mask, gt)
    print(f"{organ}: 3D Dice {d:.3f} ({s.model.info.name} {s.strategy.spec()})")
    assert d >= MIN_DICE, f"{organ} 3D Dice {d:.3f} < {MIN_DICE}"


def correction_point(mask, gt):
    """The simulated annotator's click on a slice: inside the largest error region, at
    its most interior pixel; positive if the model missed it, negative if it leaked."""
    fn, fp = gt & ~mask, mask & ~gt
    err, positive = (fn, True) if fn.sum() >= fp.sum() else (fp, False)
    lab, n = ndimage.label(err)
    big = lab == (1 + int(np.argmax(ndimage.sum(err, lab, range(1, n + 1)))))
    y, x = np.unravel_index(np.argmax(ndimage.distance_transform_edt(big)), big.shape)
    return (float(x), float(y)), positive


@pytest.mark.parametrize("organ", list(ORGANS.values()))
def test_an_edit_on_the_worst_slice_does_not_lower_dice(propagated, organ):
    s, gt = propagated[organ]
    before = dice(s.mask, gt)
    snapshot = s.mask.copy()
    ks = [k for k in range(gt.shape[0]) if gt[k].any() or s.mask[k].any()]
    worst = min(ks, key=lambda k: dice(s.mask[k], gt[k]))
    point, positive = correction_point(s.mask[worst].astype(bool), gt[worst])
    ch = s.edit(worst, point, positive)
    after = dice(s.mask, gt)
    print(f"{organ}: edit on slice {worst} ({'+' if positive else '-'}), Dice {before:.3f} -> {after:.3f}")
    assert worst in ch.slices
    # Not lowered beyond rounding: a negative click on the spleen's worst slice removes a
    # few true pixels with its leak (3D Dice 0.96579 -> 0.96577; the rule before issue 12:
    # -> 0.96587); docs/benchmark/clicks.md counts such clicks.
    assert after >= before - 1e-3
    s.undo()   # leave the shared session as the propagation test found it
    np.testing.assert_array_equal(s.mask, snapshot)


def test_slice_level_box_prompting(default_model, abdomen, default_engine):
    gt = abdomen[2] == 5
    ks = np.nonzero(gt.any(axis=(1, 2)))[0]
    s = Session(default_engine)
    s.segment_slices({int(k): SlicePrompt(box=box_of_mask(gt[k], margin=1, shape=gt[k].shape)) for k in ks})
    assert dice(s.mask, gt) >= MIN_DICE


def test_mask_prompt_from_a_previous_segmentation(default_model, abdomen, default_engine):
    """The Slicer "Mask" button / --mask-prompt: an existing mask on one slice is the prompt."""
    gt, k, _, bounds = organ_prompt(abdomen[2], 5)
    s = Session(default_engine)
    s.segment(k, SlicePrompt(mask=gt[k]), bounds=bounds)
    assert dice(s.mask, gt) >= MIN_DICE
