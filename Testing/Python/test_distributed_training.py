"""training/ under torch.distributed: two gloo processes on 127.0.0.1, on real slices.

The embeddings come from the session's ``abdomen_engine`` (written into the embedding
cache the training processes read), so nothing is encoded here."""
from __future__ import annotations

import copy
import csv
import json
import os
import socket
import subprocess
import sys
import types

import numpy as np
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


def _train(args, nproc, env):
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--nnodes", "1",
              "--master_addr", "127.0.0.1", "--master_port", str(free_port())] if nproc > 1 else [sys.executable]
    r = subprocess.run(launch + ["-m", "training.train"] + args, cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout


def test_two_process_training_exports_and_resumes(model, smoke_data, tmp_path, abdomen):  # noqa: F811
    """``torchrun --nproc_per_node 2 -m training.train`` (gloo): the rank that owns the
    uncached shard encodes it into the shared cache; the loss falls, rank 0 alone writes
    one log row per step and a delta that loads and predicts; one process then resumes
    that checkpoint from the step it reached."""
    from RadSAMLib.accel.cache import weights_sha256
    from RadSAMLib.models import load_model
    from test_training import assert_delta_predicts, fixed_batch_loss
    from training.data import load_shards
    out, store = smoke_data
    cache = tmp_path / "emb" / weights_sha256(model.image_encoder)[:16]   # EmbeddingStore's layout
    cache.mkdir(parents=True)
    torch.save(store["abdomen_train"], cache / "abdomen_train.emb.pt")   # rank 1 encodes abdomen_eval
    run_dir = tmp_path / "run"
    cfg = json.loads(SMOKE.read_text()) | {
        "shards": [str(out / "abdomen_train.npz")], "val_shards": [str(out / "abdomen_eval.npz")],
        "out_dir": str(run_dir), "embed_cache": str(tmp_path / "emb"), "steps": 10, "batch_size": 2, "lr": 3e-4,
        "max_val_objects": 1, "val_every": 10, "save_every": 5, "prompt_mix": {"mask": 1.0}}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "bench")]), OMP_NUM_THREADS="1")
    _train([str(tmp_path / "cfg.json")], 2, env)

    # The missing shard was encoded once, by its rank, into the cache (renamed into place).
    assert sorted(p.name for p in cache.iterdir()) == ["abdomen_eval.emb.pt", "abdomen_train.emb.pt"]
    assert torch.allclose(torch.load(cache / "abdomen_eval.emb.pt").float(), store["abdomen_eval"].float(), atol=0.05)
    rows = list(csv.DictReader(open(run_dir / "log.csv")))
    assert [int(r["step"]) for r in rows] == list(range(1, 11))     # rank 0's rows only
    assert torch.load(run_dir / "last.pt", weights_only=True)["step"] == 10
    val = (run_dir / "val.csv").read_text().splitlines()
    assert [v.split(",")[0] for v in val[1:]] == ["0", "10"]
    ft = load_model(str(run_dir / "radsam_litemedsam.safetensors"), device="cpu")
    assert ft.info.name == "radsam" and ft.info.extra["steps"] == 10
    fixed_loss = fixed_batch_loss(store, load_shards(cfg["shards"]), model.mask_input_size)
    before, after = fixed_loss(model), fixed_loss(ft)
    assert after < 0.9 * before, (before, after)
    assert_delta_predicts(ft, abdomen, store)

    # Resume with another world size (1): from step 10, not from 0.
    log = _train([str(tmp_path / "cfg.json"), "--set", "steps=12", "val_every=100"], 1, env)
    assert f"resumed from {run_dir / 'last.pt'} at step 10" in log
    rows = list(csv.DictReader(open(run_dir / "log.csv")))
    assert [int(r["step"]) for r in rows] == list(range(1, 13))
    assert torch.load(run_dir / "last.pt", weights_only=True)["step"] == 12
