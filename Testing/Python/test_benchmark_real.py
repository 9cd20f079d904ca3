"""The benchmark on the real abdominal CT: simulated user on real organs, a tiny real run
through ``run_case`` (reusing the session's encoded slices) and the command line end to
end on a tiny npz pack (interrupt, resume, report, plots)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from RadSAMBench import user
from RadSAMBench.protocol import Protocol, run_case
from RadSAMLib.errors import RadSAMError

ORGANS = {1: "spleen", 2: "kidney_right", 3: "kidney_left", 4: "gallbladder", 5: "liver", 6: "stomach",
          7: "pancreas", 52: "aorta", 63: "inferior_vena_cava"}


def test_prompts_on_real_organs(abdomen):
    _, _, label, _ = abdomen
    rng = np.random.default_rng(0)
    for value in ORGANS:
        gt = label == value
        ks = user.object_slices(gt)
        k = user.choose_prompt_slice(gt, "middle")
        assert gt[k].any() and abs(k - (ks[0] + ks[-1]) / 2) <= 1
        x0, y0, x1, y1 = user.jittered_box(gt[k], rng)
        ys, xs = np.nonzero(gt[k])
        # The jitter is at most 5% of the side (<= 5 px), so the box hugs the object.
        w, h = np.ptp(xs) + 1, np.ptp(ys) + 1
        assert abs(x0 - xs.min()) <= 0.05 * w + 0.5 and abs(x1 - xs.max()) <= 0.05 * w + 0.5
        assert abs(y0 - ys.min()) <= 0.05 * h + 0.5 and abs(y1 - ys.max()) <= 0.05 * h + 0.5
        x, y = user.inner_point(gt[k], rng)
        assert gt[k][int(y), int(x)]


def test_run_case_real(abdomen, abdomen_engine):
    _, volume, label, _ = abdomen
    objects = {5: "liver", 2: "kidney_right"}
    timing = {}
    recs = run_case(abdomen_engine, volume, label, objects, ["volume/box/box", "slice/box/box"], seed=0,
                    protocol=Protocol(edits=1, slice_edits=0), case="abd", model_name="litemedsam", timing=timing)
    by = {(r["object"], r["setting"]): r for r in recs}
    assert len(recs) == 4 and timing["slices_encoded"] == 0     # the engine's embeddings were reused
    liver = by[("liver", "volume/box/box")]
    assert liver["bounds"] == [0, 29] and liver["slices"] == 30
    assert liver["dice"]["0"] > 0.8 and set(liver["dice"]) == {"0", "1"}
    assert by[("liver", "slice/box/box")]["dice"]["0"] > 0.8
    assert by[("kidney_right", "volume/box/box")]["dice"]["0"] > 0.7
    for r in recs:
        assert r["oracle"]["0"] >= r["dice"]["0"] - 1e-9
        assert 0 <= r["dice"]["0"] <= 1 and r["decode_calls"] > 0
    assert len(liver["clicks"]) == 1 and liver["prompt_slice"] == 14
    # Deterministic and order-independent: the kidney alone gives the same result.
    again = run_case(abdomen_engine, volume, label, {2: "kidney_right"}, ["volume/box/box"], seed=0,
                     protocol=Protocol(edits=1, slice_edits=0), case="abd", model_name="litemedsam")
    assert again[0]["dice"] == by[("kidney_right", "volume/box/box")]["dice"]
    assert again[0]["clicks"] == by[("kidney_right", "volume/box/box")]["clicks"]


@pytest.fixture()
def tiny_pack(tmp_path, abdomen):
    """Two 3-slice crops of the abdominal CT as an npz pack (liver and right kidney)."""
    _, volume, label, _ = abdomen
    pack = tmp_path / "pack"
    pack.mkdir()
    for name, ks in (("a", slice(10, 13)), ("b", slice(13, 16))):
        lab = np.where(np.isin(label[ks], [2, 5]), label[ks], 0).astype(np.uint8)
        np.savez_compressed(pack / f"{name}.npz", image=volume[ks].astype(np.int16), label=lab,
                            spacing=np.array([3.0, 3.0, 3.0]))
    (pack / "labels.json").write_text(json.dumps({"2": "kidney_right", "5": "liver"}))
    return pack


def test_cli_end_to_end_with_resume(tiny_pack, tmp_path, model, monkeypatch):
    import RadSAMLib.models as models
    from RadSAMBench import cli, protocol
    monkeypatch.setattr(models, "load_model", lambda *a, **k: model)
    out = tmp_path / "out"
    argv = [str(tiny_pack), "--out", str(out), "--model", "litemedsam", "--strategies", "box", "--prompts", "box", "--edits", "1",
            "--slice-edits", "1", "--seed", "3"]
    real = protocol.run_case
    calls = []

    def interrupted(*a, **k):
        calls.append(k["case"])
        if k["case"] == "b":                                # stop after b's first object is saved
            save = k["on_object"]

            def save_then_stop(recs):
                save(recs)
                raise KeyboardInterrupt
            k["on_object"] = save_then_stop
        return real(*a, **k)
    monkeypatch.setattr(protocol, "run_case", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cli.main(argv)
    saved = json.loads((out / "results.json").read_text())
    assert list(saved["cases"]) == ["litemedsam|a", "litemedsam|b"]
    assert not saved["cases"]["litemedsam|a"]["partial"] and saved["cases"]["litemedsam|b"]["partial"]
    b_first = saved["cases"]["litemedsam|b"]["records"]
    assert {r["object"] for r in b_first} == {"kidney_right"} and len(b_first) == 2

    calls.clear()
    monkeypatch.setattr(protocol, "run_case", lambda *a, **k: calls.append(k["case"]) or real(*a, **k))
    assert cli.main(argv) == 0
    assert calls == ["b"]                                    # case a was not recomputed
    res = json.loads((out / "results.json").read_text())
    assert res["cases"]["litemedsam|a"] == saved["cases"]["litemedsam|a"]
    assert res["cases"]["litemedsam|b"]["records"][:2] == b_first  # ... nor b's finished object
    recs = [r for c in res["cases"].values() for r in c["records"]]
    assert len(recs) == 2 * 2 * 2                            # 2 cases x 2 organs x 2 settings
    liver = [r for r in recs if r["object"] == "liver"]
    assert all(r["dice"]["0"] > 0.8 for r in liver)
    md = (out / "report.md").read_text()
    assert "| litemedsam | box |" in md and "## Per organ" in md and "liver" in md
    for png in ("dice_vs_edits.png", "per_organ.png"):
        assert (out / png).stat().st_size > 5000
    assert res["cases"]["litemedsam|b"]["timing"]["slices_encoded"] == 3

    with pytest.raises(RadSAMError, match="other settings"):
        cli.run(cli_args(argv[:-2] + ["--seed", "4"]))
    assert cli.main([str(tiny_pack), "--labels", "spleen", "--out", str(out)]) == 2


def cli_args(argv):
    import argparse

    from RadSAMBench import cli
    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    return p.parse_args(argv)
