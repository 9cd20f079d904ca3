"""Background encoding (``SliceEngine.prefetch_around``): outward from the slice the user
looks at, re-centred when they scroll, yielding to a running interaction, within the
memory budget, and stopped with the engine. Logic only: a fake model whose encoder takes
a few milliseconds a slice (the real encoder's equality is test_speed_paths.py's)."""
from __future__ import annotations

import gc
import threading
import time

import numpy as np
import pytest
import torch

from conftest import wait_for
from fakes import FakeModel
from RadSAMLib.config import RadSAMConfig
from RadSAMLib.engine import SliceEngine
from RadSAMLib.errors import RadSAMError
from RadSAMLib.prompts import SlicePrompt


class SlowModel(FakeModel):
    def __init__(self, seconds=0.01):
        super().__init__()
        self.seconds = seconds

    def encode(self, images):
        time.sleep(self.seconds * len(images))
        return super().encode(images)


class LoggedEngine(SliceEngine):
    """Records ``(thread name, slice)`` per encoded slice, in order (no reference cycle:
    a dropped engine must be freed at once)."""

    def _encode(self, indices):
        super()._encode(indices)
        self.log.extend((threading.current_thread().name, i) for i in indices)


def engine(n=21, seconds=0.01, **config):
    vol = np.full((n, 16, 16), 40.0, np.float32)
    eng = LoggedEngine(SlowModel(seconds), vol, axis=0, config=RadSAMConfig(**config))
    eng.log = []
    return eng


def test_encodes_outward_from_the_centre_until_every_slice_is_ready():
    eng = engine(n=9)
    assert eng.prefetch_status() == (0, 9, "off")
    eng.prefetch_around(5)
    wait_for(lambda: eng.prefetch_status()[2] == "done")
    assert [k for _, k in eng.log] == [5, 6, 4, 7, 3, 8, 2, 1, 0]
    assert eng.prefetch_status() == (9, 9, "done")
    assert all(name == "radsam-look-ahead" for name, _ in eng.log)


def test_recentre_moves_the_front_to_where_the_user_scrolled():
    eng = engine(n=31, seconds=0.02)
    eng.prefetch_around(25)
    wait_for(lambda: len(eng.log) >= 3)
    eng.recentre(5)
    wait_for(lambda: eng.prefetch_status()[2] == "done")
    order = [k for _, k in eng.log]
    at = next(i for i, k in enumerate(order) if k < 15)    # the first slice of the new front
    assert at <= 5                                          # at most the slice in flight after the move
    assert order[at:at + 5] == [5, 6, 4, 7, 3]
    assert sorted(order) == list(range(31))                 # each slice once
    eng.recentre(99)                                        # outside the volume: ignored
    assert eng.prefetch_status()[2] == "done"


def test_yields_to_a_running_interaction():
    eng = engine(n=60, seconds=0.01, background_yield_s=0.2)
    eng.prefetch_around(0)
    wait_for(lambda: len(eng.log) >= 2)
    eng.prefetch([50, 51, 52, 53, 54, 55])           # an interaction's own slices
    eng._prefetch_thread.join()
    job = [i for i, (name, _) in enumerate(eng.log) if name == "radsam-prefetch"]
    assert len(job) == 6
    # Between the interaction's first and last slice the background encoded at most the
    # one slice it was encoding when the interaction started.
    assert sum(name == "radsam-look-ahead" for name, _ in eng.log[job[0]:job[-1]]) <= 1
    # A caller asking for predictions keeps it paused too.
    for _ in range(10):
        n = len(eng.log)
        eng.predict(55, SlicePrompt(box=(2, 2, 8, 8)))
        time.sleep(0.02)
        assert len(eng.log) <= n + 1
    eng.stop_background()
    assert eng.prefetch_status()[2] == "stopped"


def test_stops_at_the_memory_budget():
    # The fake embeddings are (1, 256, 64, 64) half precision: 2 MiB a slice.
    eng = engine(n=20, prefetch_memory_mb=5)
    eng.prefetch_around(10)
    wait_for(lambda: eng.prefetch_status()[2] != "encoding")
    assert eng.prefetch_status() == (3, 20, "memory")
    assert eng.cache_bytes() == 3 * 2 ** 21
    eng.predict(0, SlicePrompt(box=(2, 2, 8, 8)))    # an interaction still encodes what it needs
    assert eng.is_cached(0)


def test_stops_when_closed_or_dropped():
    eng = engine(n=200, seconds=0.01)
    eng.prefetch_around(100)
    wait_for(lambda: len(eng.log) >= 1)
    eng.close()
    n = len(eng.log)
    time.sleep(0.1)
    assert len(eng.log) == n and eng.prefetch_status()[2] == "stopped"

    eng = engine(n=200, seconds=0.01)
    eng.prefetch_around(100)
    thread, log = eng._bg_thread, eng.log
    wait_for(lambda: len(log) >= 1)
    del eng             # the volume changed: the engine is dropped, its encoding with it
    gc.collect()
    thread.join(1)
    assert not thread.is_alive() and len(log) < 100


def test_bad_centre_and_budget_are_refused():
    eng = engine(n=5)
    with pytest.raises(RadSAMError):
        eng.prefetch_around(5)
    with pytest.raises(RadSAMError):
        RadSAMConfig(prefetch_memory_mb=-1)
    with pytest.raises(RadSAMError):
        RadSAMConfig(background_yield_s=float("nan"))


def test_background_embeddings_are_the_engine_s_own():
    eng = engine(n=7)
    eng.prefetch_around(3)
    wait_for(lambda: eng.prefetch_status()[2] == "done")
    ref = engine(n=7)
    for k in range(7):
        assert torch.equal(eng.embedding(k), ref.embedding(k))
