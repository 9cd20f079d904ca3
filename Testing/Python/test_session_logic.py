"""Propagation, edits, undo/redo, cancel and bad input, with the exact stand-in model.

The stand-in (fakes.FakeModel) returns exactly what it is prompted with, so every
expected mask here is known in advance; segmentation quality is tested on real CT in
test_real_ct.py.
"""
import numpy as np
import torch
import pytest

from RadSAMLib.config import RadSAMConfig
from RadSAMLib.engine import SliceEngine
from RadSAMLib.errors import BoundsError, PromptError
from RadSAMLib.prompts import SlicePrompt
from RadSAMLib.session import Session
from fakes import FakeModel

K, J, I = 12, 50, 64


@pytest.fixture
def volume():
    v = np.full((K, J, I), 40.0, np.float32)   # soft tissue everywhere
    v[10:] = -1000.0                          # slices 10, 11: air (no content)
    return v


def make_session(volume, model=None, axis=0, **config):
    return Session.from_volume(model or FakeModel(), volume, axis=axis, config=RadSAMConfig(**config))


def box_mask(box, shape=(J, I)):
    x0, y0, x1, y1 = box
    m = np.zeros(shape, bool)
    m[y0:y1 + 1, x0:x1 + 1] = True
    return m


def test_box_prompt_lands_on_the_right_voxels(volume):
    s = make_session(volume, strategy="mask")
    box = (10, 5, 30, 20)
    ch = s.segment(4, SlicePrompt(box=box), bounds=(4, 4))
    assert ch.slices == [4]
    np.testing.assert_array_equal(s.mask[4].astype(bool), box_mask(box))


def test_mask_propagation_fills_bounds_and_touches_nothing_else(volume):
    s = make_session(volume, strategy="mask")
    s.mask[0] = 1      # stale content outside the bounds must survive
    s.mask[9, 0, 0] = 1
    box = (10, 5, 30, 20)
    ch = s.segment(5, SlicePrompt(box=box), bounds=(2, 7))
    assert (ch.lo, ch.hi) == (2, 7) and ch.slices == list(range(2, 8))
    for k in range(2, 8):
        np.testing.assert_array_equal(s.mask[k].astype(bool), box_mask(box))
    assert s.mask[0].all() and s.mask[9, 0, 0] == 1 and s.mask[8].sum() == 0
    assert s.engine.encode_count == 6  # bounded range only, each slice once


def test_unbounded_propagation_stops_where_the_object_ends(volume):
    s = make_session(volume, strategy="mask")
    ch = s.segment(5, SlicePrompt(box=(10, 5, 30, 20)))
    # slices 0..9 have content; slice 10 (air) gets a low score: cleared, and the run stops
    assert ch.slices == list(range(0, 11))
    assert s.mask[:10].any(axis=(1, 2)).all() and not s.mask[10:].any()


def test_edit_reruns_slice_and_repropagates_downstream_only(volume):
    s = make_session(volume, strategy="mask")
    box = (10, 5, 30, 20)
    s.segment(2, SlicePrompt(box=box), bounds=(0, 9))
    before = s.mask.copy()
    ch = s.edit(6, (20, 12), positive=False)      # punch a hole on slice 6
    # slice 6 was propagated from anchor 2: only 6 and the slices beyond it change
    assert ch.slices == [6, 7, 8, 9]
    assert not s.mask[6, 12, 20] and s.mask[6, 5, 10]
    assert not s.mask[9, 12, 20]                    # the hole propagated up to the bound
    np.testing.assert_array_equal(s.mask[:6], before[:6])
    # a second correction on the same slice reuses the first point
    ch = s.edit(6, (12, 7), positive=False)
    assert ch.slices == [6, 7, 8, 9]
    assert not s.mask[6, 12, 20] and not s.mask[6, 7, 12]
    assert set(s.anchors) == {2, 6} and s.anchors[6].labels == (0, 0)
    # an edit between two anchors re-propagates away from its source, up to the next anchor
    ch = s.edit(4, (20, 12), positive=False)
    assert ch.slices == [4, 5]
    # an edit below the prompt slice goes downward
    ch = s.edit(1, (20, 12), positive=False)
    assert ch.slices == [0, 1]


def test_edit_on_the_prompt_slice_repropagates_both_ways(volume):
    s = make_session(volume, strategy="mask")
    s.segment(5, SlicePrompt(box=(10, 5, 30, 20)), bounds=(1, 8))
    ch = s.edit(5, (20, 12), positive=False)
    assert ch.slices == list(range(1, 9))
    assert not s.mask[1:9, 12, 20].any()
    assert s.anchors[5].box == (10, 5, 30, 20)      # the user's box is kept with the click


def test_edit_stops_where_the_result_no_longer_changes(volume):
    # the hole changes each slice by < 10%: nothing downstream moves
    s = make_session(volume, strategy="mask", converge_dice=0.9)
    s.segment(2, SlicePrompt(box=(10, 5, 30, 20)), bounds=(0, 9))
    ch = s.edit(6, (20, 12), positive=False)
    assert ch.slices == [6, 7]


def test_undo_redo_restore_exact_states(volume):
    s = make_session(volume, strategy="mask")
    states = [s.mask.copy()]
    s.segment(5, SlicePrompt(box=(10, 5, 30, 20)), bounds=(1, 8)); states.append(s.mask.copy())
    s.edit(7, (20, 12), positive=False); states.append(s.mask.copy())
    s.edit(3, (40, 30), positive=True); states.append(s.mask.copy())
    for want in reversed(states[:-1]):
        ch = s.undo()
        assert ch
        np.testing.assert_array_equal(s.mask, want)
    assert not s.undo() and not s.can_undo
    for want in states[1:]:
        s.redo()
        np.testing.assert_array_equal(s.mask, want)
    assert set(s.anchors) == {5, 7, 3}
    s.undo()
    s.edit(2, (20, 12), positive=False)   # a new interaction clears the redo stack
    assert not s.can_redo


def test_cancel_between_slices_keeps_a_consistent_undoable_result(volume):
    old = np.zeros((K, J, I), np.uint8)
    old[:, 40:, 50:] = 1   # a previous result, differing from the new one everywhere
    calls = []
    s = make_session(volume, strategy="mask")
    s.mask[:] = old
    it = s.segment_iter(5, SlicePrompt(box=(10, 5, 30, 20)), bounds=(0, 9))
    for u in it:
        calls.append((u.done, u.total))
        if u.done == 3:
            s.cancel()
    ch = it.change
    assert ch.cancelled and len(ch.slices) == 3
    new = box_mask((10, 5, 30, 20))
    for k in range(K):  # every slice is all old or all new
        cur = s.mask[k].astype(bool)
        assert (cur == new).all() if k in ch.slices else (cur == old[k].astype(bool)).all()
    assert calls[-1][1] == 10
    s.undo()
    np.testing.assert_array_equal(s.mask, old)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_any_axis_maps_prompts_to_voxels(volume, axis):
    s = make_session(volume, axis=axis, strategy="mask")
    rows, cols = s.engine.slice_shape
    box = (2, 1, cols // 2, rows // 2)
    idx = 3
    s.segment(idx, SlicePrompt(box=box), bounds=(idx, idx))
    got = np.moveaxis(s.mask, axis, 0)[idx].astype(bool)
    np.testing.assert_array_equal(got, box_mask(box, (rows, cols)))
    assert s.mask.sum() == got.sum()


def test_slice_level_prompting_runs_each_slice_on_its_own(volume):
    s = make_session(volume)
    ch = s.segment_slices({2: SlicePrompt(box=(1, 1, 5, 5)), 6: SlicePrompt(points=[(30, 30)], labels=[1])})
    assert ch.slices == [2, 6]
    assert s.mask[2].sum() == 25 and s.mask[6, 30, 30] and s.mask[3:6].sum() == 0
    before = s.mask[6].sum()
    s.edit(6, (30, 30), positive=False)   # slice mode: no propagation
    assert not s.mask[6, 30, 30] and s.mask[6].sum() < before
    assert s.mask[2].sum() == 25 and s.mask[3:6].sum() == 0 and s.mask[7:].sum() == 0


@pytest.mark.parametrize("prompt, bounds, err, words", [
    (SlicePrompt(box=(10, 5, 80, 20)), None, PromptError, "outside the image"),
    (SlicePrompt(box=(10, 5, 10, 20)), None, PromptError, "degenerate box"),
    (SlicePrompt(points=[(-1, 3)], labels=[1]), None, PromptError, "outside the image"),
    (SlicePrompt(), None, PromptError, "empty prompt"),
    (SlicePrompt(box=(1, 1, 5, 5)), (8, 2), BoundsError, "reversed"),
    (SlicePrompt(box=(1, 1, 5, 5)), (0, 12), BoundsError, "outside the volume"),
    (SlicePrompt(box=(1, 1, 5, 5)), (6, 9), BoundsError, "prompt slice 5 is outside the bounds"),
])
def test_bad_prompts_and_bounds_are_named(volume, prompt, bounds, err, words):
    s = make_session(volume)
    with pytest.raises(err, match=words):
        s.segment(5, prompt, bounds=bounds)
    assert not s.mask.any() and not s.can_undo


def test_bad_slices_are_named(volume):
    s = make_session(volume)
    with pytest.raises(BoundsError, match="prompt slice 12 is outside the volume"):
        s.segment(12, SlicePrompt(box=(1, 1, 5, 5)))
    s.segment(5, SlicePrompt(box=(1, 1, 5, 5)), bounds=(4, 6))
    with pytest.raises(BoundsError, match="edit slice 8 is outside the bounds"):
        s.edit(8, (2, 2))
    with pytest.raises(BoundsError, match="axis"):
        SliceEngine(FakeModel(), volume, axis=3)


def test_prefetch_encodes_each_slice_once(volume):
    m = FakeModel()
    eng = SliceEngine(m, volume)
    eng.prefetch(range(K))
    for k in range(K):
        eng.embedding(k)
    eng.stop_prefetch()
    assert m.encode_calls == K and eng.encode_count == K


@pytest.mark.parametrize("trained", [False, True])
def test_a_click_changes_only_its_region_and_a_negative_one_only_removes(volume, trained):
    class Redrawing(FakeModel):
        """Answers any prompt with clicks by shifting its whole answer 2 pixels up-left: a
        whole-slice redraw, as the base model (trained on boxes only) tends to do."""
        def decode(self, embedding, box=None, points=None, labels=None, mask=None):
            logits, scores = super().decode(embedding, box, points, labels, mask)
            if points is not None and len(points):
                logits = torch.roll(logits, shifts=(-8, -8), dims=(1, 2))
            return logits, scores

    from scipy import ndimage
    m = Redrawing(strategy="box:5")
    m.info.mask_prompt_trained = trained
    s = make_session(volume, m)
    s.segment(5, SlicePrompt(box=(10, 5, 30, 20)), bounds=(5, 5))
    prev = s.slice_mask(5)
    s.edit(5, (30, 20), positive=False)
    new = s.slice_mask(5)
    removed = prev & ~new
    assert not new[20, 30] and removed.any()                 # the clicked corner is removed...
    assert not (new & ~prev).any()                           # ...and nothing is added (the redraw's
    assert new[5:7, 10:28].all() and new[5:19, 10:12].all()  # top and left edges are not taken)
    comps, _ = ndimage.label(removed, structure=np.ones((3, 3), bool))
    assert set(np.unique(comps[removed])) == {comps[20, 30]}  # one region, the one holding the click


def test_edit_progress_counts_the_slices_it_will_rewrite(volume):
    s = make_session(volume, strategy="mask")
    s.segment(2, SlicePrompt(box=(10, 5, 30, 20)), bounds=(0, 9))
    it = s.edit_iter(6, (20, 12), positive=False)
    calls = [(u.done, u.total) for u in it]
    ch = it.change
    assert calls[-1] == (len(ch.slices), len(ch.slices)) == (4, 4)
    assert all(total == 4 for _, total in calls)


def test_strategy_specs_and_mask_grow():
    """``kind[:margin[:grow]]`` parses and prints back; a grown mask prompt contains the
    previous mask, grows it round by ``grow`` model pixels, and the box is unchanged."""
    from dataclasses import replace

    from RadSAMLib.errors import RadSAMError
    from RadSAMLib.propagation import Strategy, grow_mask
    for spec, kind, margin, grow in [("box", "box", 5, 0), ("box:3", "box", 3, 0), ("mask+box:5:4", "mask+box", 5, 4),
                                     ("mask::6", "mask", 5, 6), ("hybrid:5:2", "hybrid", 5, 2)]:
        st = Strategy.parse(spec)
        assert (st.kind, st.margin, st.grow) == (kind, margin, grow)
        assert Strategy.parse(st.spec()) == st
    for bad in ("mask:x", "mask:1:2:3", "box:-2", "blob"):
        with pytest.raises(RadSAMError):
            Strategy.parse(bad)
    prev = np.zeros((60, 80), bool)
    prev[20:30, 30:50] = True
    plain = Strategy.parse("mask+box:5").prompt_from_mask(prev, scale=2.0)
    grown = Strategy.parse("mask+box:5:6").prompt_from_mask(prev, scale=2.0)
    assert plain.box == grown.box and np.array_equal(plain.mask, prev)
    assert grown.mask[prev].all() and grown.mask[17, 40] and grown.mask[32, 40] and not grown.mask[16, 40]
    assert not grown.mask[16, 26]  # round, not square: the corner grows by less than 3 px per axis
    assert np.array_equal(grow_mask(prev, 0.5), prev) and not grow_mask(np.zeros((5, 5), bool), 3).any()
    assert replace(Strategy.parse("mask"), grow=4).spec() == "mask::4" and Strategy.parse("mask").spec() == "mask"


class _PicksOneKind(FakeModel):
    """Segments only the mask prompt when given one (the box is ignored), else the box;
    predicts a higher IoU for the prompt kind ``favoured`` ("mask" or "box")."""

    def __init__(self, favoured):
        super().__init__(strategy="hybrid:5")
        self.favoured = favoured

    def decode(self, embedding, box=None, points=None, labels=None, mask=None):
        logits, _ = super().decode(embedding, box=None if mask is not None else box, points=points,
                                   labels=labels, mask=mask)
        hi = (mask is not None) == (self.favoured == "mask")
        return logits, torch.tensor([0.9 if hi else 0.6, 0.5, 0.5, 0.5])


@pytest.mark.parametrize("favoured", ["mask", "box"])
def test_hybrid_keeps_the_answer_the_model_scores_higher(volume, favoured):
    """``hybrid`` asks with ``mask+box`` and with ``box`` and keeps the better-scored
    answer: the mask answer repeats the prompt slice exactly; the box answer (margin 5
    model px = 1.25 slice px here, so 1 px after rounding) grows by a pixel per slice."""
    s = make_session(volume, _PicksOneKind(favoured))
    assert s.strategy.kind == "hybrid"
    box = (20, 15, 30, 25)
    s.segment(5, SlicePrompt(box=box), bounds=(5, 7))
    for k, grow in [(5, 0), (6, 1), (7, 2)]:
        x0, y0, x1, y1 = box
        g = grow if favoured == "box" else 0
        np.testing.assert_array_equal(s.mask[k].astype(bool), box_mask((x0 - g, y0 - g, x1 + g, y1 + g)), err_msg=f"slice {k}")


# -- the streaming API, construction, immutability (issue 14) ---------------------------------
def test_breaking_out_of_segment_iter_keeps_whole_slices_and_is_one_undo_step(volume):
    old = np.zeros((K, J, I), np.uint8)
    old[:, 40:, 50:] = 1
    s = make_session(volume, strategy="mask")
    s.mask[:] = old
    box = (10, 5, 30, 20)
    it = s.segment_iter(5, SlicePrompt(box=box), bounds=(0, 9))
    seen = []
    for u in it:
        seen.append(u.index)
        assert (u.done, u.total) == (len(seen), 10) and np.array_equal(u.result.mask, box_mask(box))
        if len(seen) == 4:
            break
    assert seen == [5, 6, 7, 8]
    ch = it.close()             # already ended by the break; close() just returns the change
    assert ch.cancelled and ch.slices == [5, 6, 7, 8]
    for k in range(K):          # every slice all old or all new
        want = box_mask(box) if k in seen else old[k].astype(bool)
        np.testing.assert_array_equal(s.mask[k].astype(bool), want, err_msg=f"slice {k}")
    assert s.can_undo
    assert s.undo().slices == [5, 6, 7, 8] and not s.can_undo
    np.testing.assert_array_equal(s.mask, old)
    s.redo()
    assert np.array_equal(s.slice_mask(8), box_mask(box)) and np.array_equal(s.slice_mask(4), old[4].astype(bool))
    # Nothing runs before iteration starts, and a run never started leaves no undo step.
    s2 = make_session(volume, strategy="mask")
    it = s2.segment_iter(5, SlicePrompt(box=box), bounds=(0, 9))
    assert s2.engine.encode_count == 0 and it.close().slices == [] and not s2.can_undo


def test_a_cancel_before_the_interaction_starts_is_honoured_then_cleared(volume):
    s = make_session(volume, strategy="mask")
    s.cancel()                                   # e.g. Cancel pressed while the job was queued
    ch = s.segment(5, SlicePrompt(box=(10, 5, 30, 20)), bounds=(0, 9))
    assert ch.cancelled and ch.slices == [] and not s.mask.any() and not s.can_undo
    ch = s.segment(5, SlicePrompt(box=(10, 5, 30, 20)), bounds=(0, 9))   # the cancel was used up
    assert not ch.cancelled and ch.slices == list(range(10))
    it = s.edit_iter(6, (20, 12), positive=False)
    it.cancel()                                  # an interaction's own cancel, before it starts
    assert it.run().cancelled and it.change.slices == [] and s.mask[6, 12, 20]


def test_cancel_from_another_thread_stops_a_running_interaction(volume):
    import threading
    s = make_session(volume, strategy="mask")
    it = s.segment_iter(5, SlicePrompt(box=(10, 5, 30, 20)), bounds=(0, 9))
    next(it)
    t = threading.Thread(target=s.cancel)
    t.start()
    t.join()
    rest = list(it)
    assert rest == [] and it.change.cancelled and it.change.slices == [5]


def test_one_interaction_at_a_time(volume):
    s = make_session(volume, strategy="mask")
    it = s.segment_iter(5, SlicePrompt(box=(10, 5, 30, 20)), bounds=(0, 9))
    next(it)
    with pytest.raises(Exception, match="still running"):
        s.segment(5, SlicePrompt(box=(10, 5, 30, 20)), bounds=(0, 9))
    with pytest.raises(Exception, match="still running"):
        s.undo()
    assert it.run().slices == list(range(10)) and s.undo().slices == list(range(10))


def test_a_session_is_built_from_an_engine_and_nothing_is_silently_ignored(volume):
    m = FakeModel()
    eng = SliceEngine(m, volume)
    with pytest.raises(TypeError, match="from_volume"):
        Session(m, volume)                                 # the old (model, volume) form
    with pytest.raises(TypeError, match="RadSAMConfig"):
        Session(eng, volume)
    with pytest.raises(TypeError):
        Session(eng, engine=eng)
    with pytest.raises(ValueError, match="engine"):
        Session(eng, RadSAMConfig(prefetch_batch=4))      # the engine applies those: build it with them
    with pytest.raises(TypeError):
        Session.from_volume(m, volume, strategy="mask")    # a tunable goes in the config
    with pytest.raises(Exception, match="strategy"):
        RadSAMConfig(strategy="blob")
    s = Session(eng, RadSAMConfig(strategy="box:3", converge_dice=0.9))
    assert s.engine is eng and s.model is m and s.strategy.spec() == "box:3" and s.config.converge_dice == 0.9
    assert Session(eng).strategy.spec() == "mask"          # no strategy: the model's default
    eng4 = SliceEngine(m, volume, config=RadSAMConfig(prefetch_batch=4))
    assert eng4.prefetch_batch == 4 and Session(eng4).config.prefetch_batch == 4


def test_slice_prompts_are_immutable_so_the_session_keeps_what_it_was_given(volume):
    from dataclasses import FrozenInstanceError
    mask = np.zeros((J, I), bool)
    mask[5:20, 10:30] = True
    points, labels = [(20.0, 12.0)], [1]
    prompt = SlicePrompt(points=points, labels=labels, mask=mask)
    s = make_session(volume, strategy="mask")
    s.segment(5, prompt, bounds=(4, 6))
    mask[:] = False                         # the caller reuses its arrays and lists
    points.append((1.0, 1.0))
    labels.append(0)
    anchor = s.anchors[5]
    assert anchor is prompt and anchor.mask.sum() == 15 * 20 and anchor.points == ((20.0, 12.0),)
    assert anchor.labels == (1,)
    with pytest.raises(FrozenInstanceError):
        prompt.box = (0, 0, 5, 5)
    with pytest.raises(ValueError):
        prompt.mask[0, 0] = True            # read-only copy
    s.edit(5, (35, 15), positive=True)      # a correction adds to a new anchor prompt
    assert s.anchors[5].points == ((20.0, 12.0), (35.0, 15.0)) and prompt.points == ((20.0, 12.0),)


def test_an_interaction_that_changes_no_voxel_leaves_no_trace(volume):
    """A click where the mask already says so changes nothing: no undo step (Undo must
    never undo nothing), and the session is as before, the click not kept as an anchor."""
    mask = np.zeros((J, I), bool)
    mask[5:20, 10:30] = True
    s = make_session(volume, strategy="mask")
    s.segment(5, SlicePrompt(mask=mask), bounds=(4, 6))
    before, anchors = s.mask.copy(), dict(s.anchors)
    ch = s.edit(5, (25, 15), positive=True)            # inside the mask already
    assert not ch and ch.slices == [] and not ch.cancelled
    assert np.array_equal(s.mask, before) and s.anchors == anchors
    assert s.undo().slices == [4, 5, 6] and not s.mask.any() and not s.can_undo   # the segment itself


def test_a_prompt_that_finds_nothing_keeps_its_bounds_for_the_next_click(volume):
    """A segmentation whose result is empty changes no voxel (no undo step), but the user's
    prompt and bounds stay: the next click answers to them and stays within the bounds."""
    s = make_session(volume, strategy="mask")
    nothing = SlicePrompt(points=[(20, 12), (20, 12)], labels=[1, 0])   # the stand-in answers: empty
    ch = s.segment(5, nothing, bounds=(4, 6))
    assert not ch and not s.mask.any() and not s.can_undo
    assert s.bounds == (4, 6) and s.mode == "volume" and list(s.anchors) == [5]
    ch = s.edit(5, (30, 20), positive=True)
    assert ch.slices == [4, 5, 6]
    assert s.mask[4:7].any(axis=(1, 2)).all() and not s.mask[:4].any() and not s.mask[7:].any()
    assert s.undo().slices == [4, 5, 6] and not s.mask.any()


def test_engine_embeddings_can_be_seeded_and_shared_and_decodes_hooked(volume):
    m = FakeModel()
    a = SliceEngine(m, volume)
    a.encode_slices([1, 2])
    b = SliceEngine(m, volume)
    b.share_embeddings(a)                   # same model: one cache for both
    assert b.cached_slices() == [1, 2]
    b.embedding(3)
    assert a.cached_slices() == [1, 2, 3] and m.encode_calls == 3
    with pytest.raises(Exception, match="encoders differ"):
        SliceEngine(FakeModel(), volume).share_embeddings(a)   # no encoder weights to compare
    with pytest.raises(Exception, match="different volumes"):
        SliceEngine(m, volume[:, :, :10]).share_embeddings(a)
    c = SliceEngine(m, volume)
    c.set_embeddings({4: a.embedding(1)})   # seeded, not encoded
    assert c.cached_slices() == [4] and c.encode_count == 0
    with pytest.raises(Exception, match="slices"):
        c.set_embeddings(a.embedding(1))    # one tensor must hold every slice
    seen = []

    def hook(idx, prompts, decode):
        seen.append((idx, len(prompts)))
        return decode(idx, prompts)
    c.set_decode_hook(hook)
    r = c.predict(4, SlicePrompt(box=(1, 1, 5, 5)))
    assert seen == [(4, 1)] and r.mask.sum() == 25 and c.encode_count == 0
    c.set_decode_hook(None)
    c.predict(4, SlicePrompt(box=(1, 1, 5, 5)))
    assert len(seen) == 1


def test_propagate_is_a_lazy_generator_of_slices(volume):
    """The loop itself (no Session): each slice is predicted only when asked for, and it
    stops at the first slice outside ``within``."""
    from itertools import islice

    from RadSAMLib.propagation import Strategy, propagate
    eng = SliceEngine(FakeModel(), volume)
    asked = []
    eng.set_decode_hook(lambda idx, prompts, decode: asked.append(idx) or decode(idx, prompts))
    prev = box_mask((10, 5, 30, 20))
    steps = propagate(eng, Strategy.parse("mask"), prev, 5, +1, lambda k: 0 <= k <= 8, bounded=True,
                      min_score=0.5, min_pixels=1)
    first = list(islice(steps, 2))
    assert [k for k, _, _ in first] == [6, 7] and asked == [6, 7]
    assert all(src == 5 and np.array_equal(r.mask, prev) for _, r, src in first)
    assert [k for k, _, _ in steps] == [8] and asked == [6, 7, 8]
