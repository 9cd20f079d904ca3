"""CPU inference engines running the exported graphs: ONNX Runtime and OpenVINO.

Each callable takes and returns torch tensors with the shapes of ``graphs.py``. A cached
graph that fails to load (truncated, corrupt, from an incompatible build) is deleted and
exported again, once.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from .graphs import cached_graph


def usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def open_graph(model, part: str, opener, graph=cached_graph):
    """``opener(path)`` on the cached graph of ``part``; rebuild once if it fails.
    ``graph(model, part, rebuild=...)`` gives ``(path, seconds)`` (default: the fp32 graph).
    Returns ``(session, export_seconds)``."""
    path, secs = graph(model, part)
    try:
        return opener(path), secs
    except Exception:
        if secs:  # a graph exported just now that fails to load: not a cache problem
            raise
        path.unlink(missing_ok=True)
        path, secs = graph(model, part, rebuild=True)
        return opener(path), secs


# -- ONNX Runtime ----------------------------------------------------------------------
def ort_session(path, threads: int, arena: bool = True):
    """An ONNX Runtime CPU session with all graph optimisations.

    ``arena``: ORT's memory arena keeps a graph's peak working set resident between runs.
    For the LiteMedSAM encoder that is ~300 MB (its 256x256x256 first-stage activations).
    It stays on: without it those blocks are mapped and zeroed by the kernel on every
    slice, which costs more time than it saves memory (docs/benchmark/design.md). The
    300-slice memory target is met by not loading timm and keeping CT volumes int16
    instead. Memory patterns (pre-planned, kept) stay off.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.enable_cpu_mem_arena = arena
    so.enable_mem_pattern = False
    # No busy-waiting between ops: the encoder (prefetch thread) and the decoder (main
    # thread) share the cores during propagation, and spinning threads starve each other.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


class OrtEncoder:
    """ONNX Runtime image encoder: ``(B, 3, S, S)`` -> ``(B, 256, 64, 64)`` float32 (CPU)."""

    backend = "onnx"

    def __init__(self, model, threads: int | None = None):
        self.threads = threads or usable_cores()
        self.session, self.export_seconds = open_graph(model, "encoder", lambda p: ort_session(p, self.threads))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.detach().to("cpu", torch.float32).numpy()
        outs = [self.session.run(None, {"images": np.ascontiguousarray(x[b:b + 1])})[0] for b in range(len(x))]
        return torch.from_numpy(np.concatenate(outs) if len(outs) > 1 else outs[0])


class OrtInt8Encoder(OrtEncoder):
    """The same, on the int8 static-quantised graph (``int8.py``). Needs the ``onnx``
    package to build (not to run: a cached graph still needs it for the key check)."""

    backend = "onnx-int8"

    def __init__(self, model, threads: int | None = None):
        from .int8 import cached_int8_graph
        self.threads = threads or usable_cores()
        self.session, self.export_seconds = open_graph(
            model, "encoder", lambda p: ort_session(p, self.threads),
            graph=lambda m, part, rebuild=False: cached_int8_graph(m, rebuild=rebuild))


class OrtDecoderCore:
    """ONNX Runtime mask decoder: ``(embedding, sparse, dense)`` -> ``(logits (1,4,256,256), scores (1,4))``."""

    backend = "onnx"

    def __init__(self, model, threads: int | None = None):
        self.threads = threads or usable_cores()
        self.session, self.export_seconds = open_graph(model, "decoder", lambda p: ort_session(p, self.threads))

    def __call__(self, embedding, sparse, dense):
        feeds = {
            "embedding": embedding.detach().to("cpu", torch.float32).contiguous().numpy(),
            "sparse": sparse.detach().to("cpu", torch.float32).contiguous().numpy(),
            "dense": dense.detach().to("cpu", torch.float32).contiguous().numpy(),
        }
        logits, scores = self.session.run(None, feeds)
        return torch.from_numpy(logits), torch.from_numpy(scores)


# -- OpenVINO --------------------------------------------------------------------------
class OpenVinoEncoder:
    """OpenVINO image encoder (CPU), from the same cached ONNX graph.

    ``precision`` "f32" (results equal eager within 1e-5). "bf16" is faster on CPUs with
    bf16 units but fails the accuracy bar (mask Dice below 0.99 vs eager on a real slice; see
    docs/benchmark/design.md), so RadSAM does not offer it. OpenVINO's compiled-blob cache lives next to
    the graphs, which cuts its compile time on later starts.
    """

    def __init__(self, model, threads: int | None = None, precision: str = "f32"):
        import openvino as ov

        from .cache import cache_dir

        self.backend = "openvino" if precision == "f32" else f"openvino-{precision}"
        self.threads = threads or usable_cores()
        core = ov.Core()
        core.set_property({"CACHE_DIR": str(cache_dir() / "openvino")})
        S = model.input_size

        def opener(path):
            m = core.read_model(str(path))
            m.reshape({"images": [1, 3, S, S]})
            # f32 must be asked for: on bf16-capable CPUs OpenVINO defaults to bf16.
            return core.compile_model(m, "CPU", {"INFERENCE_PRECISION_HINT": precision,
                                                 "INFERENCE_NUM_THREADS": self.threads,
                                                 "PERFORMANCE_HINT": "LATENCY"})
        self.compiled, self.export_seconds = open_graph(model, "encoder", opener)
        self.request = self.compiled.create_infer_request()

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.detach().to("cpu", torch.float32).numpy()
        outs = []
        for b in range(len(x)):
            res = self.request.infer({0: np.ascontiguousarray(x[b:b + 1])})
            outs.append(np.array(next(iter(res.values()))))
        return torch.from_numpy(np.concatenate(outs))
