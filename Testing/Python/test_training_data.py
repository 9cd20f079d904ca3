"""Training data additions of issue 20 on real CT: zoom shards keep image and masks
aligned and magnify the object as asked; derived lungs are the real lungs; partially
labelled volumes pack their own labels only."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import DATA, dice, need

CHAOS = DATA / "chaos_ct"
PANCREAS = DATA / "pancreatic_ct_cbct_seg"
SPLEEN = DATA / "msd_spleen"


@pytest.fixture(scope="module")
def chaos_shard(tmp_path_factory):
    """The liver's middle 16 slices of the CHAOS CT, packed."""
    from training.pack import _read, pack_volume
    need(CHAOS)
    hu, lab = _read(CHAOS / "chaos_eval_ct_ct.nii.gz", CHAOS / "chaos_eval_ct_seg.nii.gz")
    zs = np.nonzero(lab.reshape(len(lab), -1).any(1))[0]
    mid = (zs[0] + zs[-1]) // 2
    out = tmp_path_factory.mktemp("chaos") / "chaos.npz"
    pack_volume(hu[mid - 8:mid + 8], lab[mid - 8:mid + 8], {1: "liver"}, out, "chaos", pad=0)
    return out


def _unzoom(a: np.ndarray, side: int, nearest: bool) -> np.ndarray:
    from training.pack import _resize_slice
    return _resize_slice(a, side, nearest)


@pytest.mark.parametrize("frac", [0.65, 0.8])
def test_zoom_shard_keeps_ct_and_label_aligned(chaos_shard, tmp_path, frac):
    from training.pack import zoom_shard
    src = np.load(chaos_shard)
    s = zoom_shard(chaos_shard, 1, frac, tmp_path / "z.npz")
    assert s is not None
    z = np.load(tmp_path / "z.npz")
    top, left, side = (int(v) for v in str(z["source"]).rsplit("crop ", 1)[1].split(","))
    k0 = int(z["z0"]) - int(src["z0"])
    assert z["ct"].shape[1:] == (256, 256) and side < 256
    # The liver spans the asked fraction of the frame (its extent over the shard's slices).
    rows, cols = np.nonzero((z["lab"] == 1).any(0))
    assert abs(max(np.ptp(rows), np.ptp(cols)) + 1 - frac * 256) <= 0.03 * 256
    # Mapped back to the source grid, both the CT and the liver land where they came from.
    for k in range(0, len(z["ct"]), 5):
        crop_ct = src["ct"][k0 + k, top:top + side, left:left + side].astype(np.float32)
        crop_lab = src["lab"][k0 + k, top:top + side, left:left + side] == 1
        back_ct = _unzoom(z["ct"][k].astype(np.float32), side, nearest=False)
        back_lab = _unzoom((z["lab"][k] == 1).astype(np.float32), side, nearest=True) > 0.5
        assert np.abs(back_ct - crop_ct).mean() < 6.0, k          # uint8 grey levels
        if crop_lab.sum() > 200:
            assert dice(back_lab, crop_lab) > 0.95, k
        # A shifted crop would not match: the check can fail.
        assert np.abs(np.roll(back_ct, 4, axis=1) - crop_ct).mean() > np.abs(back_ct - crop_ct).mean() + 3


def test_zoom_only_magnifies(chaos_shard, tmp_path):
    from training.pack import zoom_box, zoom_shard, zoom_shards
    assert zoom_box((0, 0, 199, 99), (256, 256), 0.5) is None           # needs a 400 px crop
    top, left, side = zoom_box((100, 150, 139, 189), (256, 256), 0.4)
    assert side == 100 and 0 <= top <= 100 <= top + side and left + side <= 256
    assert zoom_shard(chaos_shard, 1, 0.3, tmp_path / "no.npz") is None  # the liver spans more
    done = zoom_shards(chaos_shard, tmp_path, 2, np.random.default_rng(0))
    assert len(done) == 2 and all(d["objects"] >= 1 for d in done)


def test_derived_lungs_match_the_manual_lung_contours():
    from training.pack import _read, add_derived, derive_lungs
    need(PANCREAS)
    hu, lab, spacing = _read(PANCREAS / "Pancreas-CT-CB_001_ct.nii.gz", PANCREAS / "Pancreas-CT-CB_001_seg.nii.gz",
                             spacing=True)
    lungs = derive_lungs(hu, spacing)
    assert lungs, "no air region of lung size found"
    derived = np.logical_or.reduce(lungs[:2])
    manual = np.isin(lab, (3, 4))                                     # lung_left, lung_right
    assert dice(derived, manual) > 0.9
    assert not (derived & np.isin(lab, (1, 2))).any()                 # no bowel or stomach voxel
    # Added as objects only where the volume has no label: labelled voxels keep theirs.
    names = {int(k): v for k, v in json.loads((PANCREAS / "labels.json").read_text()).items()}
    lab2, names2 = add_derived(hu, lab, spacing, names, ["lungs"])
    assert np.array_equal(lab2[lab > 0], lab[lab > 0])
    assert set(names2) - set(names) == {v for v in np.unique(lab2) if v not in names and v}
    with pytest.raises(ValueError, match="unknown derived object 'bone'"):
        add_derived(hu, lab, spacing, names, ["bone"])


def test_pack_pair_keeps_only_the_labelled_objects(tmp_path):
    from training.pack import pack_pair
    need(SPLEEN)
    (s,) = pack_pair(SPLEEN, tmp_path)
    z = np.load(tmp_path / s["shard"])
    assert list(z["names"]) == ["spleen"] and set(np.unique(z["lab"])) == {0, 1}
    assert len(z["ct"]) == 8 and z["body"].all()


def test_pack_refuses_an_unknown_derived_object_before_any_work(tmp_path, capsys):
    from training.pack import main
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        main(["--pair", str(tmp_path / "missing"), "--derive", "lungs,bone", "--out", str(out)])
    assert e.value.code == 2 and not out.exists()
    assert "unknown derived object 'bone' (choose: lungs)" in capsys.readouterr().err


def _shard(name, objects, slices):
    """A synthetic shard: object ``v`` (named ``objects[v]``) on ``slices[v]`` slices."""
    from training.data import Shard
    n = max(slices.values())
    lab = np.zeros((n, 8, 8), np.uint8)
    for v, k in slices.items():
        lab[:k, v, v] = v
    return Shard(name, np.zeros_like(lab), lab, np.ones(n, bool), objects, 0)


def test_class_weights_scale_each_named_class_within_its_group():
    from training.data import SampleIndex
    shards = [_shard("abdomen_a", {1: "liver", 2: "rib_left_1", 3: "rib_left_2", 4: "gallbladder"},
                     {1: 6, 2: 3, 3: 2, 4: 1}),
              _shard("chaos_b", {1: "liver"}, {1: 4})]
    idx = SampleIndex(shards, {"abdomen": 4.0, "chaos": 1.0}, {"rib_": 0.25})

    def share(shard, name):
        return sum(p for (s, _, v), p in zip(idx.rows, idx.p) if s == shard and shards[s].objects[v] == name)

    # Within a group, classes weigh the same whatever their slice count; a class weight
    # scales its own share only; groups keep their weights relative to each other.
    assert share(0, "liver") == pytest.approx(share(0, "gallbladder"))
    assert share(0, "rib_left_1") == pytest.approx(0.25 * share(0, "liver"))
    assert share(0, "rib_left_2") == pytest.approx(share(0, "rib_left_1"))
    assert share(1, "liver") == pytest.approx(share(0, "liver"))  # 4.0 / 4 classes = 1.0
    assert idx.p.sum() == pytest.approx(1.0)
    # Without class weights: the old balance (each abdomen class 1/4 of 4.0 = chaos' 1.0).
    plain = SampleIndex(shards, {"abdomen": 4.0, "chaos": 1.0})
    assert np.allclose(plain.p[[i for i, (s, _, _) in enumerate(plain.rows) if s == 1]].sum(), 1 / 5)
