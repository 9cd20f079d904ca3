"""Where exported graphs live: a per-user cache, keyed by what the graph depends on.

An exported ONNX graph depends on the weights, the opset, the exporter (torch) and the
runtime that will load it (onnxruntime), so all of them are in its file name; a change of
any one is a new file. Files are written atomically (temporary file in the same folder,
then ``os.replace``), so a crash or a concurrent process never leaves a half-written
graph under the final name; a graph that still fails to load is deleted and rebuilt.

The folder is ``$RADSAM_CACHE`` if set, else ``$XDG_CACHE_HOME/radsam``, else
``~/.cache/radsam``.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from ..files import atomic_write  # noqa: F401  (graphs.py writes through it)


def cache_dir() -> Path:
    """The user cache folder for RadSAM (created on first use)."""
    env = os.environ.get("RADSAM_CACHE")
    if env:
        d = Path(env)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        d = Path(base) / "radsam"
    d.mkdir(parents=True, exist_ok=True)
    return d


def weights_sha256(module: torch.nn.Module) -> str:
    """SHA-256 of a module's parameters and buffers (names, shapes, dtypes, values).

    Hashing the tensors rather than the checkpoint file keys a graph by the weights it
    actually holds: a fine-tuned delta applied on a base, or random weights, differ.
    """
    h = hashlib.sha256()
    for name, t in list(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


