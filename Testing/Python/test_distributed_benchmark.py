"""``radsam benchmark`` under torchrun: two gloo processes on 127.0.0.1 give the records of
one process, and a run resumes from what the ranks of an interrupted run saved."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from test_distributed_training import free_port, run_ranks

TIMING = {"decode_s", "seconds", "timing", "wall_s", "finished"}


def strip(cases: dict) -> dict:
    """Cases without their timing fields (in the order they are stored)."""
    def clean(d):
        if isinstance(d, dict):
            return {k: clean(v) for k, v in d.items() if k not in TIMING}
        if isinstance(d, list):
            return [clean(v) for v in d]
        return d
    return {k: clean(v) for k, v in cases.items()}


@pytest.fixture()
def pack3(tmp_path, abdomen):
    """Three 2-slice crops of the abdominal CT (liver, right kidney): an uneven split."""
    _, volume, label, _ = abdomen
    pack = tmp_path / "pack"
    pack.mkdir()
    for name, k in (("a", 10), ("b", 12), ("c", 14)):
        lab = np.where(np.isin(label[k:k + 2], [2, 5]), label[k:k + 2], 0).astype(np.uint8)
        np.savez_compressed(pack / f"{name}.npz", image=volume[k:k + 2].astype(np.int16), label=lab,
                            spacing=np.array([3.0, 3.0, 3.0]))
    (pack / "labels.json").write_text(json.dumps({"2": "kidney_right", "5": "liver"}))
    return pack


def test_two_process_benchmark_equals_one_process(pack3, tmp_path, model, monkeypatch):
    import RadSAMLib.models as models
    from RadSAMBench import cli, protocol
    args = ["--model", "litemedsam", "--levels", "volume", "--strategies", "box", "--prompts", "box",
            "--edits", "1", "--seed", "3", "--no-plots", "--device", "cpu", "--threads", "1"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "bench")]), OMP_NUM_THREADS="1")
    two = tmp_path / "two"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--nnodes", "1",
                        "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
                        "-m", "RadSAMLib.cli", "benchmark", str(pack3), "--out", str(two)] + args,
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    dist = json.loads((two / "results.json").read_text())
    assert not list(two.glob("results.rank*.json"))           # gathered, then removed
    # each rank ran (read, encoded) only its own cases: rank 0 a and c, rank 1 b
    bars = set(re.findall(r"benchmark: 100%.*?\| (\d/\d) ", r.stderr))
    assert bars == {"2/2", "1/1"}, r.stderr[-2000:]
    assert [c["timing"]["slices_encoded"] for c in dist["cases"].values()] == [2, 2, 2]

    monkeypatch.setattr(models, "load_model", lambda *a, **k: model)
    one = tmp_path / "one"
    assert cli.main([str(pack3), "--out", str(one)] + args) == 0
    single = json.loads((one / "results.json").read_text())
    assert list(dist["cases"]) == ["litemedsam|a", "litemedsam|b", "litemedsam|c"] == list(single["cases"])
    assert strip(dist["cases"]) == strip(single["cases"])
    assert {k: v for k, v in dist["config"].items() if k != "command"} == \
           {k: v for k, v in single["config"].items() if k != "command"}
    recs = [rec for c in dist["cases"].values() for rec in c["records"]]
    assert len(recs) == 6 and all(0 < rec["dice"]["0"] <= 1 for rec in recs)

    # An interrupted two-process run: rank 1's progress (case b) sits in its own file. A
    # one-process run resumes from both files and computes nothing.
    part = dict(dist, cases={"litemedsam|b": dist["cases"]["litemedsam|b"]})
    (two / "results.rank1.json").write_text(json.dumps(part))
    (two / "results.json").write_text(json.dumps(dict(dist, cases={k: v for k, v in dist["cases"].items()
                                                                    if k != "litemedsam|b"})))
    monkeypatch.setattr(protocol, "run_case", lambda *a, **k: pytest.fail(f"recomputed {k['case']}"))
    assert cli.main([str(pack3), "--out", str(two)] + args) == 0
    assert json.loads((two / "results.json").read_text())["cases"] == dist["cases"]
    assert not (two / "results.rank1.json").exists()


# ``radsam benchmark`` with rank 1 failing at its first case ($RADSAM_TEST_FAIL "raise":
# an exception; "exit": the process dies without a word, as when killed).
HOOKS = """
import os, sys
from RadSAMBench import protocol
from RadSAMLib.cli import main
how = os.environ["RADSAM_TEST_FAIL"]
if os.environ["RANK"] == "1":
    def run_case(*a, **k):
        if how == "exit":
            os._exit(3)
        raise ValueError("injected failure on rank 1 in case " + k["case"])
    protocol.run_case = run_case
sys.exit(main(["benchmark"] + sys.argv[1:]))
"""


def _two_ranks_one_failing(pack3, tmp_path, how, timeout_min):
    (tmp_path / "hooks.py").write_text(HOOKS)
    args = [str(pack3), "--out", str(tmp_path / "out"), "--model", "litemedsam", "--levels", "volume",
            "--strategies", "box", "--prompts", "box", "--edits", "1", "--no-plots", "--device", "cpu",
            "--threads", "1", "--dist-timeout", str(timeout_min)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "bench")]), OMP_NUM_THREADS="1",
               RADSAM_TEST_FAIL=how)
    return run_ranks([sys.executable, str(tmp_path / "hooks.py")] + args, env, tmp_path)


def test_failure_on_one_rank_ends_the_benchmark_on_every_rank(pack3, tmp_path):
    """Rank 1 raises in its first case: rank 0 (no torchrun agent here to stop it) ends
    non-zero with rank 1's message instead of waiting at the gather for its share."""
    (rc0, err0, end0), (rc1, err1, end1) = _two_ranks_one_failing(pack3, tmp_path, "raise", 5.0)
    assert rc0 not in (0, None) and rc1 not in (0, None), err0[-3000:] + err1[-3000:]
    assert "radsam: error: rank 1 failed: ValueError: injected failure on rank 1 in case b" in err0, err0[-3000:]
    assert "ValueError: injected failure on rank 1 in case b" in err1
    assert end0 - end1 < 120, (end0, end1)
    assert not (tmp_path / "out" / "report.md").exists()


@pytest.mark.slow
def test_a_silent_rank_ends_the_benchmark_after_the_timeout(pack3, tmp_path):
    """Rank 1 dies without a word (``os._exit``): rank 0 ends once rank 1 has given no sign
    of life for ``--dist-timeout`` (0.5 min), not after days."""
    (rc0, err0, end0), (rc1, err1, end1) = _two_ranks_one_failing(pack3, tmp_path, "exit", 0.5)
    assert rc1 == 3
    assert rc0 not in (0, None)
    assert "rank 1 gave no sign of life for 0.5 min" in err0, err0[-3000:]
    assert end0 - end1 < 120, (end0, end1)
