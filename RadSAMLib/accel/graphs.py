"""The two parts of a SAM-family model as export-ready modules, and their ONNX export.

* :class:`EncoderGraph`: ``images (1, 3, S, S)`` float32 in [0, 1] -> embeddings
  ``(1, 256, 64, 64)`` (the model's input normalisation is inside the graph).
* :class:`DecoderGraph`: ``embedding (1, 256, 64, 64)``, ``sparse (1, N, 256)`` prompt
  tokens, ``dense (1, 256, 64, 64)`` mask-prompt embedding -> ``logits (1, 4, 256, 256)``,
  ``scores (1, 4)``. The prompt encoder stays in PyTorch (microseconds); the image
  positional encoding, a constant, is baked into the graph.

Graphs are exported once per weights/opset/torch/runtime and cached (see ``cache.py``).
The encoder graph has a fixed batch of 1: TinyViT reads the batch size as a Python int,
so a traced graph cannot vary it, and on a CPU batching buys nothing.
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from .cache import atomic_write, cache_dir, weights_sha256

OPSET = 17


class EncoderGraph(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images):
        return self.model.image_encoder(self.model.normalize(images))


class DecoderGraph(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.mask_decoder = model.mask_decoder
        with torch.no_grad():
            pe = model.prompt_encoder.get_dense_pe().detach().clone()
        self.register_buffer("image_pe", pe, persistent=False)

    def forward(self, embedding, sparse, dense):
        return self.mask_decoder.predict_masks(
            image_embeddings=embedding, image_pe=self.image_pe,
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense)


def example_inputs(model, part: str):
    S = model.input_size
    if part == "encoder":
        return (torch.rand(1, 3, S, S),)
    emb = torch.randn(1, 256, 64, 64)
    with torch.no_grad():
        sparse, dense = model.prompt_encoder(points=None, boxes=torch.tensor([[10.0, 20.0, 90.0, 120.0]]), masks=None)
    return emb, sparse.detach().clone(), dense.detach().contiguous().clone()


def graph_key(model, part: str) -> str:
    """Cache file name: model name, part, weights hash, opset, torch and runtime versions."""
    try:
        import onnxruntime
        rt = onnxruntime.__version__
    except ImportError:
        rt = "none"
    mods = [model.image_encoder] if part == "encoder" else [model.mask_decoder, model.prompt_encoder]
    wsha = weights_sha256(nn.ModuleList(mods))
    tv = torch.__version__.split("+")[0]
    return f"{model.info.name}-{part}-{wsha[:16]}-opset{OPSET}-torch{tv}-ort{rt}.onnx"


def export(model, part: str, path: Path) -> float:
    """Export ``part`` ("encoder" or "decoder") of ``model`` (on the CPU, fp32) to ``path``,
    atomically. Returns the seconds it took."""
    if model.device.type != "cpu":
        raise ValueError("ONNX export needs the model on the CPU")
    graph = (EncoderGraph(model) if part == "encoder" else DecoderGraph(model)).eval()
    args = example_inputs(model, part)
    if part == "encoder":
        names, outs, dyn = ["images"], ["embeddings"], None
    else:
        names, outs, dyn = ["embedding", "sparse", "dense"], ["logits", "scores"], {"sparse": {1: "tokens"}}
    t0 = time.perf_counter()

    def write(tmp):
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            kw = dict(input_names=names, output_names=outs, dynamic_axes=dyn, opset_version=OPSET)
            try:  # the TorchScript exporter: fast, no extra dependencies
                torch.onnx.export(graph, args, tmp, dynamo=False, **kw)
            except TypeError:  # torch < 2.5 has no ``dynamo`` argument
                torch.onnx.export(graph, args, tmp, **kw)
    atomic_write(path, write)
    return time.perf_counter() - t0


def cached_graph(model, part: str, rebuild: bool = False) -> tuple[Path, float]:
    """Path of the cached ONNX graph of ``part``, exporting it if missing (or ``rebuild``).
    Returns ``(path, export_seconds)`` (0 when it was already cached)."""
    path = cache_dir() / graph_key(model, part)
    if path.is_file() and path.stat().st_size > 0 and not rebuild:
        return path, 0.0
    return path, export(model, part, path)
