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
