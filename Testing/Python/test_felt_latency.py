"""``radsam bench-speed --felt`` reports what it claims: the prompt-to-mask time cold and
after background encoding (with how many slices were ready), and per decoder path the
challenge clicks and the forced edit. Fake model: the figures' plumbing, not their values."""
from __future__ import annotations

import argparse
import time

import numpy as np

from fakes import FakeModel


class SlowModel(FakeModel):
    def encode(self, images):
        time.sleep(0.02 * len(images))
        return super().encode(images)


def test_felt_mode_reports_prompt_and_click_latency():
    from RadSAMBench.speedbench import add_arguments, cpu_description, felt_latency, format_felt, pick_task
    ct = np.full((16, 40, 48), 40.0, np.float32)
    label = np.zeros(ct.shape, np.uint8)
    label[3:13, 10:30, 12:36] = 5
    label[8, 10:30, 12:20] = 0          # an error for the challenge clicks to find
    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(["--felt", "--open-s", "1", "--clicks", "2", "--felt-decoders", "auto", "--label", "5"])
    task = pick_task(ct, label, 5, 100)
    rows = felt_latency(SlowModel(strategy="mask"), ct, label, task, args)
    cold, warm, clicks = rows
    assert cold["encoded_before"] == 0 and cold["slices"] == 10
    assert warm["encoded_before"] >= 5         # one second of background encoding at 20 ms a slice
    assert clicks["clicks"] >= 1 and clicks["batched"] is False and clicks["forced_edit_slices"] >= 1
    table = format_felt(rows, cpu_description())
    assert "volume open 1 s" in table and "challenge clicks" in table and table.startswith("CPU: ")


def test_prefetch_cost_compares_the_same_job_with_and_without_background_encoding(capsys):
    """``--felt-prefetch-cost``: per repeat the job alone, with the engine's own look-ahead
    in flight at the prompt, and with another engine's look-ahead; the same slices ready,
    the same result; a JSON line per job and a table of the ratios."""
    from RadSAMBench.speedbench import (add_arguments, cpu_description, format_prefetch_cost, outward_order,
                                        pick_task, prefetch_cost)
    assert outward_order(2, 6) == [2, 3, 1, 4, 0, 5]
    ct = np.full((16, 40, 48), 40.0, np.float32)
    label = np.zeros(ct.shape, np.uint8)
    label[3:13, 10:30, 12:36] = 5
    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(["--felt-prefetch-cost", "--cost-repeats", "2", "--cost-ready", "2", "--label", "5"])
    task = pick_task(ct, label, 5, 6)
    rows = prefetch_cost(SlowModel(strategy="mask"), ct, task, args)
    jobs = [r for r in rows if r["what"] == "prefetch cost"]
    summary = [r for r in rows if r["what"] == "prefetch cost summary"]
    assert [r["background"] for r in jobs] == ["none", "same engine's look-ahead", "other engine's look-ahead",
                                               "same engine's look-ahead", "other engine's look-ahead", "none"]
    assert len({r["mask_voxels"] for r in jobs}) == 1 and all(r["slices"] == 6 for r in jobs)
    for r in jobs:
        # 3 slices ready (2 + the one in flight): the job encodes the other 3 of its 6 itself.
        assert r["ready"] == 3 and r["job_encoded"] == 3, r
        if r["background"] != "none":
            assert r["background_slices_at_prompt"] == 1 and r["x_none"] > 0
    assert all(r["background_slices"] == 1 for r in jobs if r["background"].startswith("same"))
    assert [r["repeats"] for r in summary] == [2, 2, 2] and len(summary[1]["x_none"]) == 2
    out = capsys.readouterr().out
    assert out.count("# felt-prefetch {") == 9
    table = format_prefetch_cost(rows, cpu_description(), "1.0 1.0 1.0")
    assert table.startswith("CPU: ") and "| x none per repeat |" in table and "| other engine's look-ahead | 2 |" in table
