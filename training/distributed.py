"""Data-parallel training under ``torchrun`` (``torch.distributed``); a no-op in one process.

``torchrun --nproc_per_node N [--nnodes M ...] -m training.train CONFIG`` starts N ranks
per node; :func:`setup` joins them into one process group from the environment torchrun
sets (``gloo`` on CPU, ``nccl`` with one GPU per rank, ``LOCAL_RANK`` picks it).

* Every rank starts from rank 0's trained parts, optimizer state and step (rank 0 alone
  reads a checkpoint; :func:`from_main` hands its state to the others), draws its own
  batches (:func:`rank_seed`); :func:`average_gradients` averages the gradients before
  each optimizer step, so every rank takes the same step: DDP's rule. (The model is not
  wrapped in ``DistributedDataParallel``: training calls the prompt encoder and mask
  decoder directly, ``objective.decode_batch``, never the model's ``forward``, which is
  where DDP hooks in.)
* ``batch_size`` is per rank: one step learns from ``world * batch_size`` samples.
  ``lr`` is not rescaled (see docs/scaling_out.md).
* Rank 0 alone writes ``log.csv``, ``val.csv``, checkpoints and the export, and validates.
  The checkpoint holds no per-rank state (the optimizer state is the same on every
  rank), so a run resumes from it with any number of ranks.
* Every collective starts with :func:`sync`, which all-reduces an error flag first: a
  rank that fails (:func:`fail`) meets the others at whichever collective they wait in,
  and every rank raises :class:`RankFailed` with the failing rank's message. A rank that
  dies without a word (killed, a lost node) ends the others at the collective timeout
  (``dist_timeout_min``).
* With an ``embed_cache``, the ranks encode disjoint shards (one writer per file, written
  by an atomic rename), then all read the cache: :func:`prefill_cache`.
"""
from __future__ import annotations

import datetime
import os
import socket

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


class RankFailed(RuntimeError):
    """Raised on every rank when any rank failed; the message is the failing rank's."""


def setup(cfg=None, timeout_min: float | None = None) -> int:
    """Join torchrun's process group (once); returns the world size (1 without torchrun).

    ``nccl`` when the run trains on CUDA (each rank on GPU ``LOCAL_RANK``), else ``gloo``.
    The timeout (``cfg.dist_timeout_min``) is the longest any rank waits for another: rank
    0 validating while the others wait at the next step, the slowest rank's share of the
    embedding cache; past it a silent rank ends the run."""
    if timeout_min is None:
        timeout_min = float(getattr(cfg, "dist_timeout_min", 30.0))
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


_SLOTS = 8          # values one sync carries (fixed: a failing rank's sync must match any other)
_broken = False     # a collective raised: the group can carry no message any more


def _collective(fn, *args):
    global _broken
    try:
        return fn(*args)
    except BaseException:
        _broken = True
        raise


def describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error} (on {socket.gethostname()})"


def sync(error: BaseException | None = None, values=()) -> list:
    """The ranks' meeting point: the sums over ranks of ``values`` (at most 8 numbers).

    First of all it tells whether any rank failed: then every rank raises
    :class:`RankFailed` naming the failed ranks and their messages (``error`` is this
    rank's failure, see :func:`fail`)."""
    values = [float(v) for v in values]
    if len(values) > _SLOTS:
        raise ValueError(f"sync carries at most {_SLOTS} values")
    if not active():
        if error is not None:
            raise error
        return values
    t = torch.zeros(1 + _SLOTS, dtype=torch.float64)
    t[0] = float(error is not None)
    t[1:1 + len(values)] = torch.tensor(values, dtype=torch.float64)
    t = t.to(_comm_device())
    _collective(dist.all_reduce, t)
    if t[0].item() > 0:
        msgs = [None] * world()
        _collective(dist.all_gather_object, msgs, None if error is None else describe(error))
        by_msg = {}
        for r, m in enumerate(msgs):
            if m is not None:
                by_msg.setdefault(m, []).append(r)
        text = "; ".join(f"rank{'s' if len(rs) > 1 else ''} {', '.join(map(str, rs))} failed: {m}"
                         for m, rs in by_msg.items())
        raise RankFailed(text) from error
    return t[1:1 + len(values)].tolist()


def fail(error: BaseException):
    """Tell the other ranks that this one failed (they learn it at their next :func:`sync`),
    then raise :class:`RankFailed` here too. Re-raises ``error`` itself if it came from a
    collective (the group cannot carry a message then) or when not distributed."""
    if isinstance(error, RankFailed) or _broken or not active():
        raise error
    sync(error)


def from_main(obj):
    """Rank 0's ``obj`` on every rank (tensors moved to the CPU)."""
    if not active():
        return obj
    box = [_cpu(obj) if is_main() else None]
    sync()
    _collective(dist.broadcast_object_list, box, 0)
    return box[0]


def gather(obj) -> list:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not active():
        return [obj]
    sync()
    out = [None] * world()
    _collective(dist.all_gather_object, out, obj)
    return out


def _cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu(v) for v in obj)
    return obj


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def average_gradients(params) -> None:
    """Average ``p.grad`` over the ranks (one all-reduce of one flat buffer). Call it
    after a :func:`sync` in the same step (a failed rank must not be waited for here).

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
    _collective(dist.all_reduce, flat)
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

    A ``cache_dir`` on each node's own disk then holds only that node's ranks' shares: the
    node's ranks encode the rest the same way (each node encodes everything once), rather
    than every rank encoding every missing shard. Without a cache (memory only) every
    rank encodes every shard itself."""
    if not active() or not cache_dir:
        return
    from .data import EmbeddingStore
    EmbeddingStore().build(model, shards[rank()::world()], cache_dir=cache_dir)
    sync()
    folder = EmbeddingStore.cache_folder(model, cache_dir)
    missing = [sh for sh in shards if not EmbeddingStore.cache_file(folder, sh.name).is_file()]
    local, local_world = int(os.environ.get("LOCAL_RANK", "0")), int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    EmbeddingStore().build(model, missing[local::local_world], cache_dir=cache_dir)
    sync()
