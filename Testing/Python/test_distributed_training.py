"""training/ under torch.distributed: two gloo processes on 127.0.0.1, on real slices.

The embeddings come from the session's ``abdomen_engine`` (written into the embedding
cache the training processes read), so nothing is encoded here. The processes run
``training.train`` through :data:`HOOKS`, which records what each rank drew and computed
and can make one rank fail."""
from __future__ import annotations

import copy
import csv
import json
import os
import socket
import subprocess
import sys
import time
import types

import numpy as np
import pytest
import torch

from conftest import ROOT
from test_training import SMOKE, smoke_data  # noqa: F401  (the fixture: tiny real shards + embeddings)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _grad_worker(rank, port, pe, md, batches, out):
    import torch.distributed as tdist

    from training import distributed as dist
    from training.objective import decode_batch, loss_fn
    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    model = types.SimpleNamespace(prompt_encoder=pe, mask_decoder=md, device=torch.device("cpu"))
    params = [p for m in (pe, md) for p in m.parameters()]
    b, emb = batches[rank]
    logits, iou = decode_batch(model, emb, b.get("box"), b.get("points"), b.get("labels"), b.get("mask"))
    loss_fn(logits, iou, b["target"])[0].backward()
    dist.average_gradients(params)
    torch.save([None if p.grad is None else p.grad for p in params], f"{out}/grads{rank}.pt")
    tdist.destroy_process_group()


def _sync_worker(rank, port, out):
    import torch.distributed as tdist

    from training import distributed as dist
    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    got = {"sum": dist.sync(values=[rank + 1, 10 * rank]),
           "main": dist.from_main({"w": torch.full((2,), float(rank))})["w"].tolist(),
           "all": dist.gather(f"r{rank}")}
    try:
        if rank == 1:
            try:
                raise ValueError("boom")
            except ValueError as e:
                dist.fail(e)
        dist.sync(values=[1.0])         # rank 0 waits here, as at a training step
    except dist.RankFailed as e:
        got["failed"] = str(e)
    (out / f"sync{rank}.json").write_text(json.dumps(got))
    # A process that exits with the group alive can abort in gloo's threads at exit
    # ("terminate called without an active exception"): seen once in a full run.
    dist.teardown()


def test_sync_sums_and_carries_a_failure_to_every_rank(tmp_path):
    """The ranks' meeting point: values summed, rank 0's state on every rank; a rank that
    fails meets the other at the sync it waits in, and both raise with its message."""
    import torch.multiprocessing as mp
    mp.spawn(_sync_worker, args=(free_port(), tmp_path), nprocs=2, join=True)
    got = [json.loads((tmp_path / f"sync{r}.json").read_text()) for r in (0, 1)]
    for g in got:
        assert g["sum"] == [3.0, 10.0] and g["main"] == [0.0, 0.0] and g["all"] == ["r0", "r1"]
        assert g["failed"] == f"rank 1 failed: ValueError: boom (on {socket.gethostname()})"


def test_averaged_gradients_equal_one_process_on_the_union(model, smoke_data, tmp_path):  # noqa: F811
    """Rank 0 draws a mask batch, rank 1 a box batch (so the mask-prompt encoder has a
    gradient on one rank only); the averaged gradient equals one process's gradient of the
    loss over both batches (equal sizes: the mean of the two batch means)."""
    import torch.multiprocessing as mp

    from training.config import Config
    from training.data import BatchStream, SampleIndex, batch_embeddings, load_shards
    from training.objective import decode_batch, loss_fn
    out, store = smoke_data
    shards = load_shards([out / "abdomen_train.npz"])
    # the embeddings of each batch's slices (decode_batch's input)
    batches = []
    for kind, seed in (("mask", 1), ("box", 2)):
        b = BatchStream(shards, SampleIndex(shards), Config(batch_size=2, prompt_mix={kind: 1.0}), seed=0,
                        mask_size=model.mask_input_size).batch(np.random.default_rng(seed))
        batches.append((b, batch_embeddings(store, shards, b).float()))
    pe, md = copy.deepcopy(model.prompt_encoder), copy.deepcopy(model.mask_decoder)   # the session's model stays frozen
    for p in [*pe.parameters(), *md.parameters()]:
        p.requires_grad_(True)
    mp.spawn(_grad_worker, args=(free_port(), pe, md, batches, str(tmp_path)), nprocs=2, join=True)

    params = [p for m in (pe, md) for p in m.parameters()]
    for p in params:
        p.grad = None
    total = 0
    for b, emb in batches:
        logits, iou = decode_batch(types.SimpleNamespace(prompt_encoder=pe, mask_decoder=md, device=torch.device("cpu")),
                                   emb, b.get("box"), b.get("points"), b.get("labels"), b.get("mask"))
        total = total + loss_fn(logits, iou, b["target"])[0]
    (total / 2).backward()
    ref = [p.grad for p in params]
    g0, g1 = (torch.load(tmp_path / f"grads{r}.pt", weights_only=True) for r in (0, 1))
    none = [r is None for r in ref]
    assert any(none) and not all(none)        # some parameters had no gradient on either rank
    assert any(b is not None for b in ref)
    names = [f"pe.{n}" for n, _ in pe.named_parameters()] + [f"md.{n}" for n, _ in md.named_parameters()]
    mask_only = [r for n, r in zip(names, ref) if n.startswith("pe.mask_downscaling")]
    assert mask_only and all(r is not None for r in mask_only)   # rank 0's only: rank 1 drew boxes
    gmax = max(r.abs().max() for r in ref if r is not None)
    for a, b, r in zip(g0, g1, ref):
        assert (a is None) == (r is None) and (b is None) == (r is None)
        if r is not None:
            assert torch.equal(a, b)           # every rank takes the same step
            # float tolerance: the ranks (1 thread) and this process sum in other orders, and
            # some gradients are round-off around 0 (a bias before a LayerNorm)
            assert (a - r).abs().max() <= 1e-3 * r.abs().max() + 1e-5 * gmax, ((a - r).abs().max(), r.abs().max())



# Runs ``training.train.main`` with test hooks from $RADSAM_TEST_HOOKS (JSON): "dir": each
# rank appends its batches, local losses and final weights' hash to rank<r>.jsonl;
# "fail": [rank, step] raises on that rank at that step; "out_dir": {rank: folder}.
HOOKS = """
import hashlib, json, os, sys
from training import data, train
hooks = json.loads(os.environ["RADSAM_TEST_HOOKS"])
rank = int(os.environ.get("RANK", "0"))
if hooks.get("dir"):
    rec = open(os.path.join(hooks["dir"], f"rank{rank}.jsonl"), "a")
    def note(**kw):
        rec.write(json.dumps(kw) + "\\n"); rec.flush()
    loss_fn, batch, fit = train.loss_fn, data.BatchStream.batch, train.Trainer.fit
    def logged_loss(*a, **k):
        out = loss_fn(*a, **k)
        note(loss=out[0].item())
        return out
    def logged_batch(self, rng):
        b = batch(self, rng)
        note(batch=[b["z"].tolist(), b["target"].flatten(1).sum(1).tolist()])
        return b
    def hashed_fit(self):
        out = fit(self)
        sd = train._trained_state(self.model, self.cfg.train_parts)
        note(state=hashlib.sha256(b"".join(sd[k].numpy().tobytes() for k in sorted(sd))).hexdigest(), step=self.step)
        return out
    train.loss_fn, data.BatchStream.batch, train.Trainer.fit = logged_loss, logged_batch, hashed_fit
if hooks.get("fail") and hooks["fail"][0] == rank:
    step = train.Trainer.train_step
    def failing_step(self, b):
        if self.step == hooks["fail"][1]:
            raise ValueError(f"injected failure on rank {rank} at step {self.step}")
        return step(self, b)
    train.Trainer.train_step = failing_step
argv = sys.argv[1:]
if str(rank) in hooks.get("out_dir", {}):
    argv += ["--set"] if "--set" not in argv else []
    argv.insert(argv.index("--set") + 1, "out_dir=" + hooks["out_dir"][str(rank)])
train.main(argv)
"""


def _env(tmp_path, **hooks):
    (tmp_path / "hooks.py").write_text(HOOKS)
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "bench")]), OMP_NUM_THREADS="1",
                RADSAM_TEST_HOOKS=json.dumps(hooks))


def _train(tmp_path, args, nproc, env, ok=True):
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--nnodes", "1",
              "--master_addr", "127.0.0.1", "--master_port", str(free_port())] if nproc > 1 else [sys.executable]
    r = subprocess.run(launch + [str(tmp_path / "hooks.py")] + args, cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600)
    assert (r.returncode == 0) == ok, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout


def _records(folder, rank):
    recs = [json.loads(line) for line in open(folder / f"rank{rank}.jsonl")]
    return {k: [r[k] for r in recs if k in r] for k in ("loss", "batch", "state")}


def _config(tmp_path, smoke_data, model, **over):  # noqa: F811
    """The smoke config on the session's shards, with both shards' embeddings in the cache
    but for ``missing``."""
    from RadSAMLib.accel.cache import weights_sha256
    out, store = smoke_data
    missing = over.pop("missing", None)
    cache = tmp_path / "emb" / weights_sha256(model.image_encoder)[:16]   # EmbeddingStore's layout
    cache.mkdir(parents=True)
    for name in ("abdomen_train", "abdomen_eval"):
        if name != missing:
            torch.save(store[name], cache / f"{name}.emb.pt")
    cfg = json.loads(SMOKE.read_text()) | {
        "shards": [str(out / "abdomen_train.npz")], "val_shards": [str(out / "abdomen_eval.npz")],
        "out_dir": str(tmp_path / "run"), "embed_cache": str(tmp_path / "emb"), "steps": 10, "batch_size": 2,
        "lr": 3e-4, "max_val_objects": 1, "val_every": 10, "save_every": 5, "prompt_mix": {"mask": 1.0}} | over
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    return cfg, cache


def test_two_process_training_exports_and_resumes(model, smoke_data, tmp_path, abdomen):  # noqa: F811
    """``torchrun --nproc_per_node 2 -m training.train`` (gloo): the rank that owns the
    uncached shard encodes it into the shared cache; the ranks draw different batches and
    the logged loss is the mean of theirs; the loss falls, rank 0 alone writes one log row
    per step and a delta that loads and predicts. Then two ranks resume with rank 1's
    ``out_dir`` empty (a node-local disk): both continue from rank 0's checkpoint, with the
    same weights, and rank 0 says so; and one process resumes that run again."""
    from RadSAMLib.models import load_model
    from test_training import assert_delta_predicts, fixed_batch_loss
    from training.data import load_shards
    _, store = smoke_data
    cfg, cache = _config(tmp_path, smoke_data, model, missing="abdomen_eval")   # rank 1 encodes abdomen_eval
    run_dir, rec = tmp_path / "run", tmp_path / "rec"
    rec.mkdir()
    env = _env(tmp_path, dir=str(rec))
    _train(tmp_path, [str(tmp_path / "cfg.json")], 2, env)

    # The missing shard was encoded once, by its rank, into the cache (renamed into place).
    assert sorted(p.name for p in cache.iterdir()) == ["abdomen_eval.emb.pt", "abdomen_train.emb.pt"]
    assert torch.allclose(torch.load(cache / "abdomen_eval.emb.pt").float(), store["abdomen_eval"].float(), atol=0.05)
    rows = list(csv.DictReader(open(run_dir / "log.csv")))
    assert [int(r["step"]) for r in rows] == list(range(1, 11))     # rank 0's rows only
    # Each rank drew its own batches (the same seed on both would give equal ones) ...
    r0, r1 = _records(rec, 0), _records(rec, 1)
    assert len(r0["batch"]) >= 10 and len(r1["batch"]) >= 10
    assert sum(a != b for a, b in zip(r0["batch"][:10], r1["batch"][:10])) >= 8, (r0["batch"], r1["batch"])
    # ... and the log holds the mean of the ranks' losses, not rank 0's own.
    assert r0["state"] == r1["state"]                                # the same weights at the end
    logged = [float(r["loss"]) for r in rows]
    mean = [(a + b) / 2 for a, b in zip(r0["loss"], r1["loss"])]
    assert np.allclose(logged, mean, atol=1e-5), (logged, r0["loss"], r1["loss"])
    assert not np.allclose(logged, r0["loss"][:10], atol=1e-4)
    assert torch.load(run_dir / "last.pt", weights_only=True)["step"] == 10
    assert sorted(p.name for p in run_dir.glob("ckpt-*.pt")) == ["ckpt-0000005.pt", "ckpt-0000010.pt"]
    val = (run_dir / "val.csv").read_text().splitlines()
    assert [v.split(",")[0] for v in val[1:]] == ["0", "10"]
    ft = load_model(str(run_dir / "radsam_litemedsam.safetensors"), device="cpu")
    assert ft.info.name == "radsam" and ft.info.extra["steps"] == 10
    fixed_loss = fixed_batch_loss(store, load_shards(cfg["shards"]), model.mask_input_size)
    before, after = fixed_loss(model), fixed_loss(ft)
    assert after < 0.9 * before, (before, after)
    assert_delta_predicts(ft, abdomen, store)

    # Rank 1's out_dir on another (empty) disk: it must not start over from the base at
    # step 0 while rank 0 resumes at step 10 (their averaged gradients would train neither).
    local = tmp_path / "node1"
    rec2 = tmp_path / "rec2"
    rec2.mkdir()
    log = _train(tmp_path, [str(tmp_path / "cfg.json"), "--set", "steps=12", "val_every=100"], 2,
                 _env(tmp_path, dir=str(rec2), out_dir={"1": str(local)}))
    assert f"resumed from {run_dir / 'ckpt-0000010.pt'} at step 10" in log
    assert f"rank 1 ({socket.gethostname()}: {local.resolve()}) found no checkpoint where rank 0" in log, log
    s0, s1 = _records(rec2, 0), _records(rec2, 1)
    assert len(s0["loss"]) == len(s1["loss"]) == 2 and s0["state"] == s1["state"]
    assert not local.exists() or not any(local.iterdir())                # nothing written there
    rows = list(csv.DictReader(open(run_dir / "log.csv")))
    assert [int(r["step"]) for r in rows] == list(range(1, 13))

    # Resume with another world size (1): from step 12, not from 0.
    log = _train(tmp_path, [str(tmp_path / "cfg.json"), "--set", "steps=13", "val_every=100"], 1, _env(tmp_path))
    assert f"resumed from {run_dir / 'ckpt-0000012.pt'} at step 12" in log
    assert torch.load(run_dir / "last.pt", weights_only=True)["step"] == 13
    assert sorted(p.name for p in run_dir.glob("ckpt-*.pt")) == ["ckpt-0000010.pt", "ckpt-0000012.pt",
                                                                 "ckpt-0000013.pt"]


def test_truncated_checkpoint_resumes_from_the_one_before(smoke_data, tmp_path):  # noqa: F811
    """A newest checkpoint cut short (a pre-emption while a file was written in place, a
    full disk) is skipped with a warning and the run resumes from the previous one; only
    the last ``keep_checkpoints`` are kept, and every file is written by a rename."""
    from training.config import Config
    from training.train import run
    out, store = smoke_data
    run_dir = tmp_path / "run"
    cfg = dict(shards=[str(out / "abdomen_train.npz")], val_shards=[], out_dir=str(run_dir), embed_cache="",
               steps=3, save_every=1, keep_checkpoints=2, batch_size=2, prompt_mix={"mask": 1.0},
               export_from="last")
    run(Config.load(SMOKE, **cfg), store=store)
    assert sorted(p.name for p in run_dir.glob("ckpt-*.pt")) == ["ckpt-0000002.pt", "ckpt-0000003.pt"]
    assert os.path.samefile(run_dir / "last.pt", run_dir / "ckpt-0000003.pt") or \
        (run_dir / "last.pt").read_bytes() == (run_dir / "ckpt-0000003.pt").read_bytes()
    newest = run_dir / "ckpt-0000003.pt"
    newest.write_bytes(newest.read_bytes()[:4096])
    lines = []
    res = run(Config.load(SMOKE, **(cfg | {"steps": 4})), log=lines.append, store=store)
    assert any(f"checkpoint {newest} is unreadable" in m for m in lines), lines
    assert f"resumed from {run_dir / 'ckpt-0000002.pt'} at step 2" in lines
    assert res["step"] == 4 and len(res["losses"]) == 2
    assert torch.load(newest, weights_only=True)["step"] == 3                # written again, whole
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith(".")) == []   # no temporary file left
    assert sorted(p.name for p in run_dir.glob("ckpt-*.pt")) == ["ckpt-0000003.pt", "ckpt-0000004.pt"]


def run_ranks(cmd, env, folder, world=2, timeout=600):
    """``world`` processes of ``cmd`` started by hand with torchrun's environment (no agent
    to stop them): [(returncode, stderr, the second it ended)] in rank order."""
    port, procs = free_port(), []
    for r in range(world):
        e = dict(env, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                 MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        with open(folder / f"err{r}.txt", "w") as err:
            procs.append(subprocess.Popen(cmd, cwd=ROOT, env=e, stdout=subprocess.DEVNULL, stderr=err))
    ended, t0 = {}, time.time()
    try:
        while len(ended) < world and time.time() - t0 < timeout:
            ended.update({r: time.time() for r, p in enumerate(procs) if r not in ended and p.poll() is not None})
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [(p.returncode, (folder / f"err{r}.txt").read_text(), ended.get(r)) for r, p in enumerate(procs)]


def test_failure_on_one_rank_ends_every_rank_with_its_message(model, smoke_data, tmp_path):  # noqa: F811
    """Rank 1 raises at step 2: rank 0 (nothing stops it but the ranks' own protocol: no
    torchrun agent here) exits non-zero at once, with rank 1's message, long before the
    collective timeout (2 min); rank 1 exits non-zero too."""
    _config(tmp_path, smoke_data, model, val_shards=[], steps=50, dist_timeout_min=2.0)
    (rc0, err0, end0), (rc1, err1, end1) = run_ranks(
        [sys.executable, str(tmp_path / "hooks.py"), str(tmp_path / "cfg.json")], _env(tmp_path, fail=[1, 2]),
        tmp_path)
    for rc, err in ((rc0, err0), (rc1, err1)):
        assert rc not in (0, None), err[-3000:]
        assert "error: rank 1 failed: ValueError: injected failure on rank 1 at step 2" in err, err[-3000:]
    assert "Traceback" in err1                                                # the failing rank's own
    assert end0 - end1 < 60, (end0, end1)                                     # not the timeout
    assert not (tmp_path / "run" / "radsam_litemedsam.safetensors").exists()


@pytest.mark.slow
def test_failure_on_one_node_ends_the_other_torchrun_agent(model, smoke_data, tmp_path):  # noqa: F811
    """Two torchrun agents (two "nodes", one rank each) meeting by c10d rendezvous on
    127.0.0.1: the rank 1 failure ends the other node's agent too, both with its message."""
    _config(tmp_path, smoke_data, model, val_shards=[], steps=50, dist_timeout_min=2.0)
    env = _env(tmp_path, fail=[1, 2])
    port = free_port()
    agents = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node",
                                "1", "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}",
                                "--rdzv_id", "radsam-test", "--max_restarts", "0", str(tmp_path / "hooks.py"),
                                str(tmp_path / "cfg.json")], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True) for _ in range(2)]
    t0 = time.time()
    outs = [a.communicate(timeout=600) for a in agents]
    assert time.time() - t0 < 300
    for a, (out, err) in zip(agents, outs):
        assert a.returncode != 0, out[-2000:] + err[-2000:]
        assert "rank 1 failed: ValueError: injected failure on rank 1 at step 2" in err, err[-3000:]
