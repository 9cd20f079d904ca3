"""The benchmark's simulated user, statistics and dataset readers (synthetic data, fast)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from RadSAMBench import user
from RadSAMBench.datasets import open_dataset, pack_dataset
from RadSAMBench.protocol import Protocol, Setting, body_slices, object_target
from RadSAMBench.stats import bootstrap_ci, summarize
from RadSAMLib.errors import RadSAMError
from RadSAMLib.metrics import dice


def ellipsoid(shape=(12, 40, 50), center=(6, 20, 24), radii=(4, 12, 16)):
    k, j, i = np.ogrid[:shape[0], :shape[1], :shape[2]]
    return ((k - center[0]) / radii[0]) ** 2 + ((j - center[1]) / radii[1]) ** 2 + ((i - center[2]) / radii[2]) ** 2 <= 1


def test_prompt_slice_rules():
    gt = ellipsoid()
    gt[2:4] = False                                 # extent 4..10 -> middle 7
    assert user.choose_prompt_slice(gt, "middle") == 7
    gt[9, 5:35, 5:45] = True                        # slice 9 becomes the largest
    assert user.choose_prompt_slice(gt, "largest") == 9
    rng = np.random.default_rng(0)
    picks = {user.choose_prompt_slice(gt, "random", rng) for _ in range(50)}
    assert picks <= set(user.object_slices(gt)) and len(picks) > 3
    with pytest.raises(ValueError):
        user.choose_prompt_slice(gt, "first")


def test_box_jitter_is_bounded_seeded_and_valid():
    m = np.zeros((60, 80), bool)
    m[10:50, 20:61] = True                          # 41 wide, 40 high: jitter <= 2.05 / 2.0 px
    boxes = [user.jittered_box(m, np.random.default_rng(s)) for s in range(200)]
    b = np.array(boxes)
    assert np.all(np.abs(b - [20, 10, 60, 49]) <= 2.05 + 0.5)
    assert len({tuple(x) for x in boxes}) > 10      # it does jitter
    assert user.jittered_box(m, np.random.default_rng(3)) == user.jittered_box(m, np.random.default_rng(3))
    big = np.zeros((300, 300), bool)
    big[50:250, 50:250] = True                      # 5% would be 10 px: capped at 5
    b = np.array([user.jittered_box(big, np.random.default_rng(s)) for s in range(100)])
    assert np.abs(b - [50, 50, 249, 249]).max() <= 5.5 and np.abs(b - [50, 50, 249, 249]).max() >= 3
    one = np.zeros((10, 10), bool)
    one[9, 9] = True                                # a 1-pixel object in the corner still gets a valid box
    x0, y0, x1, y1 = user.jittered_box(one, np.random.default_rng(0))
    assert x0 < x1 <= 9 and y0 < y1 <= 9 and x0 >= 0 and y0 >= 0


def test_point_is_deep_inside():
    m = np.zeros((40, 40), bool)
    m[5:35, 10:30] = True                           # 20 wide: max depth 10
    d = user.border_distance(m)
    assert d.max() == 10 and d[5, 10] == 1 and d[0, 0] == 0
    for s in range(50):
        x, y = user.inner_point(m, np.random.default_rng(s))
        assert m[int(y), int(x)] and d[int(y), int(x)] >= 5
    pts = {user.inner_point(m, np.random.default_rng(s)) for s in range(50)}
    assert len(pts) > 10
    p = user.make_prompt("point", m, np.random.default_rng(1))
    assert p.labels == (1,) and len(p.points) == 1


def test_edits_are_uniform_among_errors():
    gt = np.zeros((4, 20, 20), bool)
    gt[1:3, 5:15, 5:15] = True                      # 200 voxels
    pred = gt.copy()
    pred[1, 5:15, 5:10] = False                     # 50 missed
    pred[2, 0:2, 0:15] = True                       # 30 spurious
    rng = np.random.default_rng(0)
    n_pos = 0
    for _ in range(800):
        k, (x, y), pos = user.sample_edit(pred, gt, rng)
        assert pred[k, int(y), int(x)] != gt[k, int(y), int(x)]
        assert pos == gt[k, int(y), int(x)]
        n_pos += pos
    assert abs(n_pos / 800 - 50 / 80) < 0.06          # uniform over the 80 error voxels
    k, _, pos = user.sample_edit(pred, gt, rng, slice_idx=2)
    assert k == 2 and not pos
    assert user.sample_edit(gt, gt, rng) is None
    assert user.sample_edit(pred, gt, rng, slice_idx=0) is None


def test_dice_and_bootstrap():
    a = np.zeros((5, 5), bool)
    a[:2] = True
    b = np.zeros((5, 5), bool)
    b[1:3] = True
    assert dice(a, b) == pytest.approx(0.5)
    assert dice(a, a) == 1.0 and dice(a, ~a) == 0.0
    m, lo, hi = bootstrap_ci([[0.8, 0.9]])
    assert m == lo == hi == pytest.approx(0.85)
    rng = np.random.default_rng(0)
    groups = [list(rng.normal(0.7, 0.1, 3)) for _ in range(30)]
    m, lo, hi = bootstrap_ci(groups, seed=1)
    assert lo < m < hi and hi - lo < 0.1
    assert (m, lo, hi) == bootstrap_ci(groups, seed=1)
    m2, lo2, hi2 = bootstrap_ci(groups[:5], seed=1)
    assert hi2 - lo2 > hi - lo                       # fewer cases -> wider interval
    recs = [{"model": "m", "setting": "s", "case": f"c{c}", "object": o, "dice": {"0": v}}
            for c, (o, v) in enumerate([("a", 0.5), ("b", 0.7), ("a", 0.9)])]
    s = summarize(recs, 0)[("m", "s")]
    assert s[0] == pytest.approx(0.7) and s[4] == 3 and s[5] == "cases"
    per = summarize(recs, 0, by=("object",))
    assert per[("a",)][0] == pytest.approx(0.7) and per[("b",)][0] == pytest.approx(0.7)


def test_body_slices_restrict_the_object():
    image = np.full((10, 20, 20), -1000.0, np.float32)
    image[:, 2:18, 2:18] = 40.0
    image[7:] = -1000.0                             # cropped CT: slices 7.. are all air
    image[7:, 8:10, 8:10] = 40.0                    # ... except a 4-pixel patch (0.01 of 400 < 0.02)
    label = np.zeros(image.shape, np.uint8)
    label[2:10, 5:15, 5:15] = 3
    body = body_slices(image, min_fraction=0.02)
    assert body.tolist() == [True] * 7 + [False] * 3
    gt, bounds = object_target(label, 3, body)
    assert bounds == (2, 6) and gt[7:].sum() == 0 and gt.sum() == 5 * 100


def test_settings_and_protocol_errors():
    assert Setting.parse("volume/box/mask+box").strategy == "mask+box"
    for bad in ("volume/box", "cube/box/box", "volume/scribble/box", "volume/box/magic"):
        with pytest.raises(RadSAMError):
            Setting.parse(bad)
    with pytest.raises(RadSAMError):
        Protocol(prompt_slice="top")
    assert Protocol(edits=5).checkpoints("volume") == [0, 1, 2, 5]
    assert Protocol(edits=7).checkpoints("volume") == [0, 1, 2, 5, 7]
    assert Protocol(slice_edits=3).checkpoints("slice") == [0, 1, 2, 3]


# -- datasets ---------------------------------------------------------------------------------
def _write_nifti(arr, path, spacing=(2.0, 1.5, 1.5)):
    import SimpleITK as sitk
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing[::-1])
    sitk.WriteImage(img, str(path))


def _volume():
    image = np.full((6, 16, 16), -1000, np.int16)
    image[:, 2:14, 2:14] = 30
    label = np.zeros(image.shape, np.uint8)
    label[1:5, 4:10, 4:10] = 1
    label[2:4, 10:13, 10:13] = 2
    return image, label


def test_pairs_layout_and_pack_roundtrip(tmp_path):
    image, label = _volume()
    src = tmp_path / "pairs" / "validation"
    src.mkdir(parents=True)
    (src.parent / "labels.json").write_text(json.dumps({"1": "Liver", "2": "Spleen"}))
    for n in ("pt_1", "pt_2"):
        _write_nifti(image, src / f"{n}_ct.nii.gz")
        _write_nifti(label, src / f"{n}_oar.nii.gz")
    ds = open_dataset(src)
    assert ds.layout == "pairs" and [c.name for c in ds.cases] == ["pt_1", "pt_2"]
    assert ds.select_labels("spleen,1") == {2: "Spleen", 1: "Liver"}
    im, lab, sp = ds.cases[0].load()
    assert np.array_equal(lab, label) and np.allclose(sp, (2.0, 1.5, 1.5)) and im.dtype == np.float32
    dst = pack_dataset(src, tmp_path / "pack", cases="pt_2", labels="Spleen", progress=False)
    packed = open_dataset(dst)
    assert packed.layout == "npz" and [c.name for c in packed.cases] == ["pt_2"]
    assert packed.labels == {2: "Spleen"}
    im, lab, sp = packed.cases[0].load()
    assert np.array_equal(im, image) and np.array_equal(lab, np.where(label == 2, 2, 0))
    assert np.allclose(sp, (2.0, 1.5, 1.5))
    with np.load(dst / "pt_2.npz") as z:
        assert z["image"].dtype == np.int16 and z["label"].dtype == np.uint8


def test_nnunet_and_totalseg_layouts(tmp_path):
    image, label = _volume()
    nn = tmp_path / "Dataset001"
    (nn / "imagesTr").mkdir(parents=True)
    (nn / "labelsTr").mkdir()
    (nn / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "liver": 1, "spleen": 2},
                                                 "file_ending": ".nii.gz"}))
    _write_nifti(image, nn / "imagesTr" / "case_001_0000.nii.gz")
    _write_nifti(label, nn / "labelsTr" / "case_001.nii.gz")
    ds = open_dataset(nn)
    assert ds.layout == "nnunet" and ds.labels == {0: "background", 1: "liver", 2: "spleen"}
    assert ds.select_labels(None) == {1: "liver", 2: "spleen"}
    assert np.array_equal(ds.cases[0].load()[1], label)

    ts = tmp_path / "totalseg" / "s0001"
    (ts / "segmentations").mkdir(parents=True)
    _write_nifti(image, ts / "ct.nii.gz")
    _write_nifti((label == 1).astype(np.uint8), ts / "segmentations" / "liver.nii.gz")
    _write_nifti((label == 2).astype(np.uint8), ts / "segmentations" / "spleen.nii.gz")
    ds = open_dataset(ts.parent)
    assert ds.layout == "totalseg" and ds.labels == {1: "liver", 2: "spleen"}
    _, lab, _ = ds.cases[0].load([2])
    assert np.array_equal(lab, np.where(label == 2, 2, 0))


def test_dataset_errors(tmp_path):
    with pytest.raises(RadSAMError, match="not found"):
        open_dataset(tmp_path / "nope")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("x")
    with pytest.raises(RadSAMError, match="matches no dataset layout"):
        open_dataset(tmp_path / "junk")
    pack = tmp_path / "pack"
    pack.mkdir()
    image, label = _volume()
    np.savez(pack / "a.npz", image=image, label=label, spacing=np.ones(3))
    (pack / "labels.json").write_text(json.dumps({"1": "liver"}))
    ds = open_dataset(pack)
    with pytest.raises(RadSAMError, match="unknown label 'kidney'"):
        ds.select_labels("liver,kidney")
    with pytest.raises(RadSAMError, match="empty"):
        ds.select_labels(" , ")
    with pytest.raises(RadSAMError, match="not in"):
        ds.select_cases("b")


def test_oracle_picks_the_best_mask_per_slice():
    from types import SimpleNamespace

    from RadSAMBench.protocol import _Oracle
    gt = np.zeros((3, 10, 10), bool)
    gt[:, 2:8, 2:8] = True
    orc = _Oracle(gt, lo=4)                          # the slab starts at slice 4
    for k in range(3):
        masks = np.zeros((4, 10, 10), bool)
        masks[0, 2:8, 2:5] = True                    # primary: half of the object
        masks[1, 2:8, 2:8] = True                    # an alternative: exact
        masks[2, :, :] = True
        orc(4 + k, SimpleNamespace(masks=masks))
    assert orc.dice() == pytest.approx(1.0)
    orc(5, None)                                     # a cleared slice counts as empty
    assert orc.dice() == pytest.approx(2 * 72 / (72 + 108))
    one = _Oracle(gt[:1], lo=0)
    masks = np.zeros((4, 10, 10), bool)
    masks[0, 2:8, 2:8] = True
    masks[1:, 2:8, 2:4] = True
    one(0, SimpleNamespace(masks=masks))
    assert one.dice() == pytest.approx(1.0)          # never below the primary


# -- the CVPR 2025 challenge click -------------------------------------------------------------
def test_challenge_click_goes_to_the_deepest_point_of_the_largest_error():
    gt = np.zeros((9, 30, 40), bool)
    gt[1:8, 3:26, 3:30] = True
    pred = gt.copy()
    pred[2:7, 10:15, 9:14] = False             # missed cube 5 x 5 x 5: deepest voxel (4, 12, 11)
    pred[4, 10:12, 32:34] = True               # a smaller leak (4 voxels)
    k, (x, y), pos = user.challenge_click(pred, gt)
    assert (k, x, y, pos) == (4, 11.0, 12.0, True)
    pred = gt.copy()
    pred[0:9, 0:30, 31:40] = True              # the largest error is now a leak: a negative click
    pred[3, 10, 10] = False                    # ... a 1-voxel miss elsewhere is not clicked
    k, (x, y), pos = user.challenge_click(pred, gt)
    assert not pos and not gt[k, int(y), int(x)] and pred[k, int(y), int(x)]
    assert (k, x) == (4, 35.0) and 4 <= y <= 25      # the leak's middle; the image edge is its border
    assert user.challenge_click(gt, gt) is None


def test_challenge_click_breaks_ties_with_a_fixed_seed():
    gt = np.zeros((3, 20, 60), bool)
    gt[:, 5:8, 5:55] = True                    # a 3 x 3 bar missed entirely: 48 equally deep voxels
    pred = np.zeros_like(gt)
    clicks = {user.challenge_click(pred, gt) for _ in range(5)}
    assert len(clicks) == 1                    # the same click every call (seeded per call)
    k, (x, y), pos = clicks.pop()
    assert k == 1 and y == 6.0 and 6 <= x <= 53 and pos
    others = {user.challenge_click(pred, gt, seed=s)[1] for s in range(20)}
    assert len(others) > 5                     # ... and the seed alone picks among the ties
    # Euclidean, not city-block: a 26-connected diagonal blob counts as one component.
    gt2 = np.zeros((5, 12, 12), bool)
    pred2 = gt2.copy()
    pred2[1, 1, 1] = pred2[2, 2, 2] = pred2[3, 3, 3] = True    # 3 voxels joined diagonally
    pred2[1, 9:11, 9] = True                                    # 2 voxels apart
    k, (x, y), pos = user.challenge_click(pred2, gt2)
    assert (k, x, y) in {(1, 1.0, 1.0), (2, 2.0, 2.0), (3, 3.0, 3.0)} and not pos


def test_click_auc_and_the_share_of_clicks_lowering_dice():
    from RadSAMBench.stats import click_auc, click_summary
    assert click_auc([0.5, 0.6, 0.7, 0.8, 0.9, 1.0]) == pytest.approx(0.65 + 0.75 + 0.85 + 0.95)
    recs = [{"model": "m", "setting": "volume/box/box", "challenge": [0.5, 0.6, 0.55, 0.7, 0.7, 0.7],
             "challenge_clicks": [[0, 0, 0, 1]] * 4},
            {"model": "m", "setting": "volume/box/box", "challenge": [0.9, 1.0, 1.0, 1.0, 1.0, 1.0],
             "challenge_clicks": [[0, 0, 0, 1]]}]      # perfect after one click: the rest is padding
    s = click_summary(recs)[("m", "volume/box/box")]
    assert s["clicks"] == 5 and s["lowered"] == pytest.approx(1 / 5)
    assert s["gain"] == pytest.approx(0.15) and s["mean"][0] == pytest.approx(0.7)
    assert s["auc"] == pytest.approx((click_auc(recs[0]["challenge"]) + 4.0) / 2)


# -- the challenge's box jitter (--box-jitter) ----------------------------------------------------
def test_challenge_box_only_widens_by_whole_frame_pixels_and_is_seeded():
    m = np.zeros((256, 512), bool)                  # rows 256, cols 512: 1 frame px = 1 row, 2 columns
    m[100:141, 200:301] = True
    tight = np.array([200, 100, 300, 140])
    boxes = [user.challenge_box(m, np.random.default_rng(s), 5) for s in range(300)]
    grow = {tuple(np.array([-1, -1, 1, 1]) * (np.array(b) - tight)) for b in boxes}
    assert grow == {(2 * k, k, 2 * k, k) for k in range(6)}       # every side, the same k in 0..5
    assert user.challenge_box(m, np.random.default_rng(7), 5) == user.challenge_box(m, np.random.default_rng(7), 5)
    assert {user.challenge_box(m, np.random.default_rng(s), 0) for s in range(20)} == {(200.0, 100.0, 300.0, 140.0)}
    edge = np.zeros((64, 64), bool)
    edge[0:10, 60:64] = True                        # clipped to the image, still only wider
    for s in range(10):                             # shift k * 64 / 256: up to 12 px
        x0, y0, x1, y1 = user.challenge_box(edge, np.random.default_rng(s), 50)
        assert (y0, x1) == (0, 63) and 60 - x0 == y1 - 9 >= 0
    one = np.zeros((10, 10), bool)
    one[9, 9] = True                                # k = 0 on a 1-pixel object: still a valid box
    x0, y0, x1, y1 = user.challenge_box(one, np.random.default_rng(0), 0)
    assert (x0, y0, x1, y1) == (8.0, 8.0, 9.0, 9.0)


def test_box_jitter_is_off_by_default_recorded_when_on_and_the_same_for_every_model():
    from fakes import FakeModel
    from RadSAMBench.protocol import _rng, run_case
    from RadSAMBench.report import markdown
    image = np.full((6, 64, 64), 40, np.int16)
    label = np.zeros(image.shape, np.uint8)
    label[1:5, 20:40, 10:50] = 1
    args = dict(objects={1: "bar"}, settings=["volume/box/box", "slice/box/box"], seed=4, case="c")
    quiet = dict(edits=0, challenge_edits=0, slice_edits=0)

    def engine():
        from RadSAMLib.engine import SliceEngine
        return SliceEngine(FakeModel(), image)

    default = run_case(engine(), image, label, protocol=Protocol(**quiet), **args)
    assert "box_jitter" not in Protocol().to_dict()           # earlier runs' configs (and resumes) unchanged
    k0 = default[0]["prompt_slice"]
    assert default[0]["prompt"] == list(user.jittered_box(label[k0] == 1, _rng(4, "c", "bar", "volume", "box", "prompt")))

    runs = [run_case(engine(), image, label, protocol=Protocol(box_jitter=5, **quiet), model_name=n, **args)
            for n in ("base", "new")]
    assert runs[0][0]["prompt"] == runs[1][0]["prompt"]       # seeded by case and object, not by model
    x0, y0, x1, y1 = runs[0][0]["prompt"]
    assert x0 <= 10 and y0 <= 20 and x1 >= 49 and y1 >= 39   # contains the tight box
    assert (10 - x0) == (20 - y0) == (x1 - 49) == (y1 - 39) <= 1   # 64 px: k * 64 / 256 <= 1
    assert Protocol(box_jitter=5).to_dict()["box_jitter"] == 5
    results = {"config": {"protocol": Protocol(box_jitter=5).to_dict()},
               "cases": {"x": {"model": "base", "records": runs[0]}}}
    assert "widened by 0..5 px per 256" in markdown(results)
    for bad in (-1, 2.5):
        with pytest.raises(RadSAMError, match="box jitter"):
            Protocol(box_jitter=bad)
