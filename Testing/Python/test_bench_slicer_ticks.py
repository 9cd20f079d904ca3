"""``scripts/bench_slicer_ticks.py --prefetch`` runs end to end: RadSAM's ticks on real
MRML with no background encoding and while an engine's look-ahead thread encodes the
volume in the same process, one row each. Fake model, tiny volume: the plumbing, not the
figures (speed is the benchmark's, never a test's)."""
from __future__ import annotations

import importlib.util
import time

import pytest

from conftest import ROOT
from fakes import FakeModel

pytest.importorskip("slicer", reason="needs the slicer-core wheel (pip install slicer-core)")


class SlowModel(FakeModel):
    def encode(self, images):
        time.sleep(0.01 * len(images))
        return super().encode(images)


def script():
    spec = importlib.util.spec_from_file_location("bench_slicer_ticks", ROOT / "scripts" / "bench_slicer_ticks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_prefetch_mode_prints_ticks_without_and_with_the_look_ahead(capsys):
    mod = script()
    mod.main(["--prefetch", "--slices", "40", "--rows", "48", "--cols", "56", "--ticks", "3",
              "--tick-every-ms", "20"], model=SlowModel())
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("volume 56 x 48 x 40 (i x j x k)")
    assert "Ticks while the volume is encoded in the background" in out and "fake" in out
    header = next(line for line in lines if line.startswith("writer"))
    for col in ("slices/tick", "background", "ticks", "first ms", "median ms", "max ms", "median cpu", "encoded"):
        assert col in header
    rows = [line.split() for line in lines if line.startswith(("in place", "Show 3D"))]
    assert len(rows) == 6
    assert [r[-2] if r[-1].startswith("(") else r[-1] for r in rows][::2] == ["-"] * 3     # no background
    for r in rows[1::2]:                       # the look-ahead ran through the row (40 slices to encode)
        assert "look-ahead" in r and int(r[-2]) >= 0 and r[-1] in ("(encoding)", "(done)"), r
