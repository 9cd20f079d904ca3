"""Data-parallel training under ``torchrun`` (``torch.distributed``); a no-op in one process.

``torchrun --nproc_per_node N [--nnodes M ...] -m training.train CONFIG`` starts N ranks
per node; :func:`setup` joins them into one process group from the environment torchrun
sets (``gloo`` on CPU, ``nccl`` with one GPU per rank, ``LOCAL_RANK`` picks it).

* Every rank holds the same trained parts (same base weights, same ``init_from``, same
  ``last.pt``) and draws its own batches (:func:`rank_seed`); :func:`average_gradients`
  averages the gradients before each optimizer step, so every rank takes the same step:
  DDP's rule. (The model is not wrapped in ``DistributedDataParallel``: training calls the
  prompt encoder and mask decoder directly, ``objective.decode_batch``, never the model's
  ``forward``, which is where DDP hooks in.)
* ``batch_size`` is per rank: one step learns from ``world * batch_size`` samples.
  ``lr`` is not rescaled (see training/README.md, "Scaling out").
* Rank 0 alone writes ``log.csv``, ``val.csv``, checkpoints and the export, and validates.
  The checkpoint holds no per-rank state (the optimizer state is the same on every
  rank), so a run resumes from it with any number of ranks.
* With an ``embed_cache``, the ranks encode disjoint shards (one writer per file, written
  by an atomic rename), then all read the cache: :func:`prefill_cache`.
"""
from __future__ import annotations

import datetime
import os

import numpy as np
import torch
import torch.distributed as dist


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def setup(cfg=None, timeout_min: float = 120.0) -> int:
    """Join torchrun's process group (once); returns the world size (1 without torchrun).

    ``nccl`` when the run trains on CUDA (each rank on GPU ``LOCAL_RANK``), else ``gloo``.
    The timeout covers rank 0 validating while the others wait at the next step."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or active():
        return world()
    device = str(getattr(cfg, "device", "auto"))
    cuda = torch.cuda.is_available() and device in ("auto", "cuda") or device.startswith("cuda:")
    if cuda:
        # "cuda" (and load_model's "auto") then means this rank's own GPU.
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=timeout_min))
    return world()


def teardown() -> None:
    if active():
        dist.destroy_process_group()


def rank_seed(seed: int) -> int:
    """Rank 0 keeps ``seed`` (a one-process run is unchanged); every other rank gets its
    own stream, independent of ``seed`` + small offsets the runs use for resuming."""
    r = rank()
    return int(seed) if r == 0 else int(np.random.SeedSequence([int(seed), r]).generate_state(1)[0])


def any_rank(flag: bool) -> bool:
    """True on every rank if ``flag`` is true on any: the ranks agree on when to stop."""
    if not active():
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=_comm_device())
    dist.all_reduce(t)
    return bool(t.item() > 0)


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def average_gradients(params) -> None:
    """Average ``p.grad`` over the ranks (one all-reduce of one flat buffer).

    A parameter no rank used (``grad is None`` everywhere: e.g. the mask-prompt encoder in
    a box-only step) stays ``None``, as in one process, so Adam leaves it alone; one that
    only some ranks used gets the others' zeros in the mean."""
    if not active():
        return
    params = list(params)
    dev = _comm_device()
    flat = torch.cat([(p.grad.detach().float().flatten() if p.grad is not None else torch.zeros(p.numel()))
                      .to(dev) for p in params]
                     + [torch.tensor([float(p.grad is not None) for p in params], device=dev)])
    dist.all_reduce(flat)
    flat /= world()
    used = flat[-len(params):] > 0
    off = 0
    for p, u in zip(params, used.tolist()):
        n = p.numel()
        p.grad = flat[off:off + n].view_as(p).to(p.dtype).to(p.device).clone() if u else None
        off += n


def prefill_cache(model, shards, cache_dir: str) -> None:
    """Fill the embedding cache before every rank reads it: rank r encodes shards r, r+N,
    ... (those not cached yet), one writer per file; then all ranks wait for all files.
    Without a cache (memory only) every rank encodes every shard itself."""
    if not active() or not cache_dir:
        return
    from .data import EmbeddingStore
    EmbeddingStore().build(model, shards[rank()::world()], cache_dir=cache_dir)
    dist.barrier()
