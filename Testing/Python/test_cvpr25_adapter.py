"""RadSAM through the CVPR 2025 challenge's official evaluator (``radsam cvpr25``).

The evaluator itself (``../shared/cvpr25/eval``, unmodified) runs on a small synthetic case
in the challenge's npz format; the tests skip when it is absent.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT

EVAL = ROOT.parent / "shared" / "cvpr25" / "eval"


@pytest.fixture(scope="module")
def evaluator():
    if not (EVAL / "CVPR25_iter_eval.py").is_file():
        pytest.skip(f"the CVPR 2025 evaluator is not at {EVAL}")
    return EVAL / "CVPR25_iter_eval.py"


def _box(gt3):
    """The challenge's box dict (get_boxes.py, without its jitter)."""
    z = np.unique(np.nonzero(gt3)[0])
    mid = z[len(z) // 2]
    ys, xs = np.nonzero(gt3[mid])
    return {"z_min": np.int64(z[0]), "z_max": np.int64(z[-1]), "z_mid": np.int64(mid),
            "z_mid_x_min": np.int64(xs.min()), "z_mid_y_min": np.int64(ys.min()),
            "z_mid_x_max": np.int64(xs.max()), "z_mid_y_max": np.int64(ys.max())}


@pytest.fixture()
def case(tmp_path):
    """4 slices of 64 x 64: a bright disk (label 1, top right) and a grey bar (label 2,
    bottom left, wide), as the challenge ships a case: images in one folder, the ground
    truth in another. Nothing is symmetric in x and y: a swapped axis misses both."""
    j, i = np.ogrid[:64, :64]
    gts = np.zeros((4, 64, 64), np.uint8)
    for k, r in enumerate((7, 10, 10, 7)):
        gts[k][(j - 16) ** 2 + (i - 44) ** 2 <= r * r] = 1
    gts[1:4, 40:52, 6:40] = 2
    imgs = np.full(gts.shape, 30, np.uint8)
    imgs[gts == 1] = 220
    imgs[gts == 2] = 130
    boxes = np.empty(2, object)
    boxes[:] = [_box(gts == 1), _box(gts == 2)]
    spacing = np.array([1.0, 1.0, 2.5])          # (x, y, z), as the challenge stores it
    (tmp_path / "imgs").mkdir()
    (tmp_path / "gts").mkdir()
    np.savez_compressed(tmp_path / "imgs" / "CT_toy.npz", imgs=imgs, boxes=boxes, spacing=spacing,
                        text_prompts=np.array({"1": "disk", "2": "square", "instance_label": 0}, dtype=object))
    np.savez_compressed(tmp_path / "gts" / "CT_toy.npz", gts=gts, spacing=spacing)
    return tmp_path, gts


def _load(path):
    with np.load(path, allow_pickle=True) as f:
        return {k: f[k] for k in f.files}


def _rows(save, team):
    import csv
    return list(csv.DictReader(open(save / team / f"{team}_metrics.csv")))


def test_a_predictor_that_returns_the_truth_scores_one_every_round(evaluator, case, tmp_path):
    from RadSAMBench.cvpr25 import run_evaluator
    root, gts = case
    seen = []

    def truth(inputs, outputs):
        data = _load(inputs / "CT_toy.npz")
        seen.append(data)
        np.savez_compressed(outputs / "CT_toy.npz", segs=gts)

    rows = run_evaluator(evaluator, root / "imgs" / "CT_toy.npz", tmp_path / "out", {"truth": truth},
                         gts_dir=root / "gts")
    row = rows["truth"]
    assert [float(row[f"DSC_{r}"]) for r in range(1, 7)] == [1.0] * 6
    assert [float(row[f"NSD_{r}"]) for r in range(1, 7)] == [1.0] * 6
    assert float(row["DSC_AUC"]) == 4.0 and float(row["DSC_Final"]) == 1.0
    assert _rows(tmp_path / "out", "truth")[0]["CaseName"] == "CT_toy.npz"     # the evaluator's own file
    assert len(seen) == 6
    assert "boxes" in seen[0] and "clicks" not in seen[0]
    for d in seen[1:]:                         # perfect: every round adds a None, no click
        assert {"clicks", "clicks_order", "prev_pred", "boxes"} <= set(d)
        assert np.array_equal(d["prev_pred"], gts)
        assert all(o is None for row in d["clicks_order"] for o in row)
    assert seen[-1]["clicks_order"].shape == (2, 5)


def test_the_newest_click_of_each_class_is_read_from_the_evaluator_input(evaluator, case, tmp_path, monkeypatch):
    """Round 1 answers nothing; each click round answers label 1 perfectly and label 2 not
    at all: label 2 gets a new positive click every round, label 1 none after round 2.
    As on a CUDA machine without cupy: the evaluator takes its CPU EDT, the predictor still
    sees the GPU."""
    import torch
    from RadSAMBench.cvpr25 import newest_clicks, run_evaluator
    root, gts = case
    got = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)

    def half(inputs, outputs):
        assert torch.cuda.is_available()
        d = _load(inputs / "CT_toy.npz")
        if "clicks" in d:
            got.append(newest_clicks(list(d["clicks"]), list(d["clicks_order"])))
            np.savez_compressed(outputs / "CT_toy.npz", segs=(gts == 1).astype(np.uint8))
        else:
            np.savez_compressed(outputs / "CT_toy.npz", segs=np.zeros_like(gts))

    row = run_evaluator(evaluator, root / "imgs" / "CT_toy.npz", tmp_path / "out", {"half": half},
                        gts_dir=root / "gts")["half"]
    assert len(got) == 5
    (z, y, x), pos = got[0][0]
    assert pos and gts[z, y, x] == 1               # (z, y, x) indices into imgs: inside the disk
    assert all(g[0] is None for g in got[1:])     # label 1 is perfect from round 2 on
    for g in got:
        (z, y, x), pos = g[1]
        assert pos and gts[z, y, x] == 2
    assert float(row["DSC_1"]) == 0.0 and float(row["DSC_2"]) == pytest.approx(0.5)


def test_a_failing_predictor_stops_the_run_with_a_clear_error(evaluator, case, tmp_path):
    from RadSAMBench.cvpr25 import run_evaluator
    from RadSAMLib.errors import RadSAMError
    root, _ = case

    def broken(inputs, outputs):
        raise ValueError("weights missing")

    with pytest.raises(RadSAMError, match="predictor failed: ValueError: weights missing"):
        run_evaluator(evaluator, root / "imgs" / "CT_toy.npz", tmp_path / "out", {"broken": broken},
                      gts_dir=root / "gts")
    import numpy
    assert not hasattr(numpy, "Inf") or numpy.__version__ < "2"    # the numpy 2 shim is removed again


def test_radsam_through_the_official_evaluator(evaluator, case, tmp_path, model, monkeypatch, capsys):
    """``radsam cvpr25`` with the real LiteMedSAM as two teams: the evaluator scores both,
    each slice is encoded once for the case, and a second run resumes without work."""
    from RadSAMBench import cvpr25
    from RadSAMLib import models
    root, gts = case
    monkeypatch.setattr(models, "load_model", lambda *a, **k: model)
    engines = []
    real = cvpr25._EnginePool.engine

    def spy(self, *a):
        engines.append(real(self, *a))
        return engines[-1]
    monkeypatch.setattr(cvpr25._EnginePool, "engine", spy)
    out = tmp_path / "run"
    argv = [str(root / "imgs"), "--gts", str(root / "gts"), "--evaluator", str(evaluator.parent),
            "--model", "litemedsam", "--model", "litemedsam@legacy", "--device", "cpu", "--out", str(out)]
    assert cvpr25.main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    assert set(res["teams"]) == {"litemedsam", "litemedsam-legacy"}
    for team in res["teams"]:
        row = res["cases"]["CT_toy.npz"]["teams"][team]["row"]
        dsc = [float(row[f"DSC_{r}"]) for r in range(1, 7)]
        assert dsc[0] > 0.8, dsc                    # the box round finds the disk and the square
        assert all(0.0 <= d <= 1.0 for d in dsc) and 0.0 <= float(row["DSC_AUC"]) <= 4.0
        assert (out / "cases" / "CT_toy" / team / f"{team}_metrics.csv").is_file()
        with np.load(out / "cases" / "CT_toy" / team / "CT_toy.npz") as f:
            assert f["all_segs"].shape == (6,) + gts.shape
        classes = res["cases"]["CT_toy.npz"]["teams"][team]["classes"]
        assert set(classes) == {"1", "2"} and min(classes["1"][0], classes["2"][0]) > 0.8
    assert len(engines) == 2 and sum(e.encode_count for e in engines) == 4     # 4 slices, encoded once
    md = (out / "report.md").read_text()
    assert "| litemedsam@legacy | 1 |" in md and "DSC after each round" in md and "| 1 disk |" in md
    assert "radsam cvpr25 " + str(root / "imgs") in md      # the command that made it
    printed = capsys.readouterr().out
    assert "DSC_AUC" in printed
    engines.clear()
    assert cvpr25.main(argv) == 0                   # resumed: nothing to run again
    assert engines == []


def test_radsam_cvpr25_reports_bad_input_in_one_line(tmp_path, capsys):
    from RadSAMLib.cli import main
    assert main(["cvpr25", str(tmp_path / "nowhere")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    (tmp_path / "cases").mkdir()
    assert main(["cvpr25", str(tmp_path / "cases")]) == 2        # no eval/ beside the cases, no --evaluator
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no CVPR 2025 evaluator" in err
