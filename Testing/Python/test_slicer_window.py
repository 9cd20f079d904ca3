"""The intensity window the model sees: presets, a viewer's window/level, one derived from
the prompt region; the same choice in the API (``Window``), the command line
(``--window``) and the Slicer logic (``RadSAMLogic.window``).
"""
from __future__ import annotations

import sys

import numpy as np
import pytest

from conftest import ABDOMEN, ROOT, need
from RadSAMLib.errors import RadSAMError
from RadSAMLib.preprocess import WINDOW_PRESETS, Window, prompt_region


def test_presets_levels_and_parsing():
    assert Window() == Window.preset("soft-tissue") == Window.from_level(400, 40)
    assert Window.preset("lung") == Window(-1200, 200) and Window.preset("bone") == Window(-100, 900)
    assert Window.parse("bone") == Window.preset("bone") and Window.parse("-1000:250") == Window(-1000, 250)
    for bad in ("lungs", "1:2:3", "300:100"):
        with pytest.raises(ValueError):
            Window.parse(bad)
    assert set(WINDOW_PRESETS) == {"soft-tissue", "lung", "bone"}


def test_a_window_from_the_prompt_region_spans_it():
    hu = np.full((60, 80), -850.0)               # lung
    hu[:, 60:] = 40.0                           # chest wall
    hu[:5, :5] = 3000.0                         # a metal artefact outside the box
    region = prompt_region(hu, box=(10, 10, 70, 50))
    assert region.shape == (41, 61) and region.max() == 40.0
    w = Window.from_region(region)
    assert w.lo <= -850 and w.hi >= 40 and w.lo % 50 == 0 and w.hi % 50 == 0 and w.hi - w.lo < 1200
    # A uniform region still gets a usable width; a point prompt covers a patch around it.
    narrow = Window.from_region(np.full((10, 10), 50.0))
    assert narrow.hi - narrow.lo >= 400 and narrow.lo <= 50 <= narrow.hi
    assert prompt_region(hu, points=[(30, 30)], pad=4).shape == (9, 9)
    with pytest.raises(ValueError, match="no box, point or mask"):
        prompt_region(hu)


def test_cli_rejects_an_unknown_window_before_loading_the_model(tmp_path, monkeypatch):
    need(ABDOMEN)
    from RadSAMLib import cli

    def no_model(*a, **k):
        raise AssertionError("the model was loaded before the window was checked")
    monkeypatch.setattr("RadSAMLib.models.load_model", no_model)
    args = [str(ABDOMEN / "ct.nii.gz"), "-o", str(tmp_path / "m.nii.gz"), "--slice", "22",
            "--box", "20", "20", "50", "50", "-q"]
    with pytest.raises(RadSAMError, match="unknown window 'lungs'"):
        cli.cmd_segment(cli.build_parser().parse_args(["segment", *args, "--window", "lungs"]))
    # auto: derived from the box region of the prompt slice, before the model loads.
    from RadSAMLib.imageio import image_to_array, read_image
    vol = image_to_array(read_image(ABDOMEN / "ct.nii.gz"))
    parsed = cli.build_parser().parse_args(["segment", *args, "--window", "auto"])
    from RadSAMLib.prompts import SlicePrompt
    assert cli._window("auto", vol, 0, {22: SlicePrompt(box=(20, 20, 50, 50))}) == \
        Window.from_region(vol[22, 20:51, 20:51])
    with pytest.raises(AssertionError, match="model was loaded"):
        cli.cmd_segment(parsed)          # got past the window check


def test_the_slicer_logic_encodes_under_the_chosen_window(model, abdomen, abdomen_engine):
    pytest.importorskip("slicer", reason="needs the slicer-core wheel")
    sys.path.insert(0, str(ROOT / "RadSAM"))
    from RadSAMLib.prompts import SlicePrompt, box_of_mask
    from test_slicer_logic import logic_on_ct

    seen = []

    def factory(m, volume, axis, window):
        seen.append(window)
        return abdomen_engine           # its embeddings do not matter here: which window is asked for does

    with logic_on_ct(model, factory) as (mrml, vol, logic, seg):
        t = logic.target_for(vol, seg, logic.add_segment(seg))
        lung = np.isin(abdomen[2], (13, 14))
        k = int(np.argmax(lung.sum(axis=(1, 2))))
        box = box_of_mask(lung[k], margin=2)
        logic.window = "auto"
        logic.segment(t, k, SlicePrompt(box=box), (k - 2, k))
        want = Window.from_region(prompt_region(abdomen[1][k].astype(np.float32), box=box))
        assert seen == [want] and want.lo < -700          # the lung is inside the window
        ys, xs = np.nonzero(lung[k])
        logic.edit(t, k, (float(xs[0]), float(ys[0])), positive=True)
        assert seen == [want]                             # corrections reuse the segment's window
        logic.window = "bone"
        logic.segment(t, k, SlicePrompt(box=box), (k - 2, k))
        assert seen == [want, Window.preset("bone")]
        logic.window = Window.from_level(1500, -600)      # the view's window/level
        logic.segment(t, k, SlicePrompt(box=box), (k - 2, k))
        assert seen[-1] == Window(-1350, 150)
        logic.window = "nonsense"
        with pytest.raises(RadSAMError, match="unknown window"):
            logic.start_segment(t, k, SlicePrompt(box=box), (k - 2, k))
