"""PyTorch paths: eager (the reference), reduced precision, CUDA graphs for the decoder.

* :class:`TorchEncoder` ``(B, 3, S, S)`` -> ``(B, 256, 64, 64)`` on the model's device;
  ``precision`` "fp32" (eager, the reference every other path is checked against),
  "fp16" / "bf16" (autocast: matrix products in half precision, norms and softmax in fp32).
  Large batches are split into ``batch_size`` chunks to bound activation memory.
* :class:`TorchDecoderCore` and :class:`CudaGraphDecoderCore`: the mask decoder on
  ``(embedding, sparse, dense)`` (see ``graphs.DecoderGraph``). On a GPU one decode is
  ~100 small kernels, so launch overhead dominates; a CUDA graph replays them at once.
"""
from __future__ import annotations

import contextlib

import torch

from .graphs import DecoderGraph

_DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def _autocast(device: torch.device, precision: str):
    dtype = _DTYPES[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


class TorchEncoder:
    def __init__(self, model, precision: str = "fp32", batch_size: int = 32):
        if precision not in _DTYPES:
            raise ValueError(f"precision must be one of {', '.join(_DTYPES)}")
        self.model = model
        self.precision = precision
        self.batch_size = batch_size
        self.backend = "torch" if precision == "fp32" else f"torch-{precision}"
        self.export_seconds = 0.0

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        m = self.model
        dev = m.device
        outs = []
        for b in range(0, len(images), self.batch_size):
            x = images[b:b + self.batch_size].to(dev, torch.float32, non_blocking=True)
            with _autocast(dev, self.precision):
                outs.append(m.image_encoder(m.normalize(x)))
        out = outs[0] if len(outs) == 1 else torch.cat(outs)
        return out.float() if out.dtype != torch.float32 else out


class TorchDecoderCore:
    backend = "torch"

    def __init__(self, model, precision: str = "fp32"):
        self.graph = DecoderGraph(model).eval()
        self.precision = precision
        self.device = model.device
        self.export_seconds = 0.0
        if precision != "fp32":
            self.backend = f"torch-{precision}"

    @torch.inference_mode()
    def __call__(self, embedding, sparse, dense):
        with _autocast(self.device, self.precision):
            logits, scores = self.graph(embedding.to(self.device, torch.float32), sparse, dense)
        return logits.float(), scores.float()


class CudaGraphDecoderCore:
    """The decoder captured as one CUDA graph per number of prompt tokens."""

    def __init__(self, model, precision: str = "fp32"):
        self.graph = DecoderGraph(model).eval()
        self.precision = precision
        self.device = model.device
        self.backend = "cuda-graph" if precision == "fp32" else f"cuda-graph-{precision}"
        self.export_seconds = 0.0
        self._graphs: dict = {}

    def _capture(self, tokens: int):
        dev = self.device
        st = {
            "emb": torch.zeros(1, 256, 64, 64, device=dev),
            "sparse": torch.zeros(1, tokens, 256, device=dev),
            "dense": torch.zeros(1, 256, 64, 64, device=dev),
        }
        s = torch.cuda.Stream(dev)
        s.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(s), torch.inference_mode(), _autocast(dev, self.precision):
            for _ in range(2):  # warm-up: cuBLAS handles, autotuning, allocator pools
                self.graph(st["emb"], st["sparse"], st["dense"])
        torch.cuda.current_stream(dev).wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g), torch.inference_mode(), _autocast(dev, self.precision):
            logits, scores = self.graph(st["emb"], st["sparse"], st["dense"])
        st.update(graph=g, logits=logits, scores=scores)
        return st

    @torch.inference_mode()
    def __call__(self, embedding, sparse, dense):
        tokens = int(sparse.shape[1])
        st = self._graphs.get(tokens)
        if st is None:
            st = self._graphs[tokens] = self._capture(tokens)
        st["emb"].copy_(embedding, non_blocking=True)
        st["sparse"].copy_(sparse, non_blocking=True)
        st["dense"].copy_(dense, non_blocking=True)
        st["graph"].replay()
        # The outputs are overwritten by the next replay: hand out copies.
        return st["logits"].float().clone(), st["scores"].float().clone()
