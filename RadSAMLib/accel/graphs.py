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

The export needs torch only, not the ``onnx`` package (nor its ``protobuf``,
``ml_dtypes``...): see :func:`_without_onnx_package`.
"""
from __future__ import annotations

import contextlib
import importlib
import threading
import time
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from .cache import atomic_write, cache_dir, weights_sha256

OPSET = 17
# Bumped whenever a graph's construction changes, so a stale cached export is never reused.
GRAPH_VERSION = {"encoder": 1, "decoder": 2}


class EncoderGraph(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images):
        return self.model.image_encoder(self.model.normalize(images))


class DecoderGraph(nn.Module):
    """SAM's ``MaskDecoder.predict_masks`` for one image, with the output upscaling done
    channels-last.

    SAM upscales the transformer's ``(HW, 256)`` tokens with two stride-2 2x2 transposed
    convolutions and a channel LayerNorm in between. Such a convolution has no overlap,
    so it is one matrix product per token (``256 -> 4 x 64``, then ``64 -> 4 x 32``) with
    the 2x2 sub-pixels kept as extra axes; the LayerNorm is then over the last axis (one
    fused op). ONNX Runtime ran the original as ConvTranspose + ReduceMean + transposes,
    ~25% of the decoder's time on a CPU. The sub-pixel axes are put in image order once,
    on the 4 output masks. Same math as the eager decoder (tested to 1e-4 on real CT).
    """

    def __init__(self, model):
        super().__init__()
        self.mask_decoder = md = model.mask_decoder
        with torch.no_grad():
            pe = model.prompt_encoder.get_dense_pe().detach().clone()
        self.register_buffer("image_pe", pe, persistent=False)
        up = md.output_upscaling
        self.conv1, self.norm1, self.act1, self.conv2, self.act2 = up[0], up[1], up[2], up[3], up[4]

    @staticmethod
    def _as_matmul(conv):
        """A stride-2 2x2 ``ConvTranspose2d`` as ``(C_in, 4 * C_out)`` weights and bias, the
        output laid out as (di, dj, channel). Derived from the live weights on every call
        (a few microseconds), so a graph built before a training step sees the new weights."""
        c_in, c_out = conv.in_channels, conv.out_channels
        return conv.weight.permute(0, 2, 3, 1).reshape(c_in, 4 * c_out), conv.bias.repeat(4)

    def forward(self, embedding, sparse, dense):
        md = self.mask_decoder
        out_tokens = torch.cat([md.iou_token.weight, md.mask_tokens.weight], dim=0)[None]
        tokens = torch.cat((out_tokens, sparse), dim=1)
        src = embedding + dense
        _, c, h, w = src.shape
        hs, src = md.transformer(src, self.image_pe, tokens)  # src: (1, h*w, c)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1:1 + md.num_mask_tokens, :]

        (w1, b1), (w2, b2) = self._as_matmul(self.conv1), self._as_matmul(self.conv2)
        c1, c2 = self.conv1.out_channels, self.conv2.out_channels
        x = (src @ w1 + b1).reshape(1, h * w * 4, c1)  # tokens x (di, dj)
        x = self.act1(nn.functional.layer_norm(x, (c1,), self.norm1.weight, self.norm1.bias, self.norm1.eps))
        x = self.act2(x @ w2 + b2).reshape(1, h * w * 16, c2)  # x (di, dj, ei, ej)

        hyper_in = torch.stack([mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(md.output_hypernetworks_mlps)], dim=1)
        m = hyper_in.shape[1]
        masks = (x @ hyper_in[0].transpose(0, 1))  # (h*w*16, m)
        # (i, j, di, dj, ei, ej, m) -> (m, i, di, ei, j, dj, ej): row 4i+2di+ei, column 4j+2dj+ej.
        masks = masks.reshape(h, w, 2, 2, 2, 2, m).permute(6, 0, 2, 4, 1, 3, 5).reshape(1, m, 4 * h, 4 * w)
        return masks, md.iou_prediction_head(iou_token_out)


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
    return f"{model.info.name}-{part}-{wsha[:16]}-g{GRAPH_VERSION[part]}-opset{OPSET}-torch{tv}-ort{rt}.onnx"


# Where torch's TorchScript exporter keeps the step that needs the ``onnx`` package: torch
# 2.9 and later, then 2.0 to 2.8.
_SPLICE_MODULES = ("torch.onnx._internal.torchscript_exporter.onnx_proto_utils",
                   "torch.onnx._internal.onnx_proto_utils")
_SPLICE_LOCK = threading.Lock()


def onnx_package_works() -> bool:
    """Whether ``import onnx`` succeeds. Installed is not enough: in Slicer, pip's
    ``--no-deps`` can leave it without ``protobuf`` (or with an ``ml_dtypes`` built for
    another numpy), and then importing it fails."""
    try:
        importlib.import_module("onnx")
    except Exception:  # noqa: BLE001 - ImportError, or a binary built for another numpy
        return False
    return True


def _splice_module():
    for name in _SPLICE_MODULES:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        if callable(getattr(mod, "_add_onnxscript_fn", None)):
            return mod
    return None


@contextlib.contextmanager
def _without_onnx_package():
    """Let the TorchScript exporter finish when the ``onnx`` package cannot be imported.

    The exporter writes the graph in C++; its one use of ``onnx`` is a last step that
    parses the written bytes to copy in the ONNX Script functions of custom operators
    (``_add_onnxscript_fn``), and it imports ``onnx`` for that even when there are none.
    RadSAM's graphs register no custom operators, so that step returns the bytes
    unchanged: skipping it gives the same file (tested byte for byte). When ``onnx``
    imports, or a future torch has moved the step, the exporter runs untouched.
    """
    mod = None if onnx_package_works() else _splice_module()
    if mod is None:
        yield
        return
    with _SPLICE_LOCK:
        original = mod._add_onnxscript_fn

        def unchanged(model_bytes, custom_opsets):
            if custom_opsets:  # not RadSAM's graphs: what the original would need onnx for
                return original(model_bytes, custom_opsets)
            return model_bytes
        mod._add_onnxscript_fn = unchanged
        try:
            yield
        finally:
            mod._add_onnxscript_fn = original


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
        with warnings.catch_warnings(), torch.no_grad(), _without_onnx_package():
            warnings.simplefilter("ignore")
            kw = dict(input_names=names, output_names=outs, dynamic_axes=dyn, opset_version=OPSET)
            try:  # the TorchScript exporter: fast; the dynamo one needs onnxscript and onnx
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
