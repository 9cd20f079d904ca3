"""Pick the fastest available encoder / decoder path for a model on a device.

``auto`` choices (each measured faster than eager on its device and checked equal to
eager fp32 within mask Dice >= 0.99 per slice on real CT, see docs/benchmark/speed.md):

======  ==============================================  =====================
device  encoder                                         decoder
======  ==============================================  =====================
cpu     ``onnx`` > ``torch`` (``openvino``,             ``onnx`` > ``torch``
        ``onnx-int8`` by name)
cuda    ``torch`` (fp32); ``torch-fp16`` for SAM ViT    ``cuda-graph``
other   ``torch``                                       ``torch``
======  ==============================================  =====================

``onnx-int8`` (static int8, ``int8.py``) comes first on the CPU only when
``INT8_BY_DEFAULT`` is set by a documented accuracy decision (docs/benchmark/speed.md) and
the CPU has int8 units (VNNI or AMX, ``cpu.py``); it needs the ``onnx`` package.

An exported path that cannot be built (runtime missing, export failure) falls back to the
eager PyTorch path with a warning; a backend asked for by name fails loudly instead.
"""
from __future__ import annotations

import copy
import importlib.util
import warnings

import torch

from ..errors import RadSAMError
from ..models.base import SamFamilyModel
from .cpu import has_native_int8
from .decoder import FastDecoder
from .torch_paths import CudaGraphDecoderCore, TorchDecoderCore, TorchEncoder

# (No bf16 path on the CPU: faster, but below the accuracy bar; docs/benchmark/design.md.)
ENCODER_BACKENDS = ("auto", "torch", "torch-fp16", "torch-bf16", "onnx", "onnx-int8", "openvino")
# Whether ``auto`` may choose the int8 encoder on a CPU with int8 units: only where the
# benchmark's mean Dice moves by < 0.003 (issue 21); docs/benchmark/speed.md, "int8 static".
INT8_BY_DEFAULT = False
DECODER_BACKENDS = ("auto", "torch", "onnx", "cuda-graph", "cuda-graph-fp16", "eager")


def check_encoder_option(option: str, name: str) -> None:
    """Refuse a command-line encoder backend name that does not exist: checked by name,
    before any model loads."""
    if name not in ENCODER_BACKENDS:
        raise RadSAMError(f"{option} '{name}' is unknown (choose {', '.join(ENCODER_BACKENDS)})")


def have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _device(model, device) -> torch.device:
    return torch.device(device) if device is not None else model.device


def _cpu_model(model):
    """The model itself if on the CPU, else a CPU copy (graph export runs on the CPU)."""
    return model if model.device.type == "cpu" else copy.deepcopy(model).cpu()


def available_encoders(model, device=None, int8: bool = True) -> list[str]:
    """Encoder backends usable here for ``model`` on ``device`` (default: its device).
    ``int8=False`` skips checking ``onnx-int8`` (that imports ``onnx`` and hashes the weights)."""
    dev = _device(model, device)
    if dev.type == "cuda":
        return ["torch", "torch-fp16", "torch-bf16"]
    if dev.type != "cpu":
        return ["torch"]
    out = ["torch"]  # (CPU bf16 autocast: no faster than ONNX Runtime fp32 here, and less exact)
    # The graphs are exported by torch alone (graphs.py): the ``onnx`` package is not needed.
    if have("onnxruntime"):
        out.append("onnx")
        if int8 and _int8_reason(model) is None:
            out.append("onnx-int8")
    if have("openvino"):
        out.append("openvino")
    return out


def available_decoders(model, device=None) -> list[str]:
    dev = _device(model, device)
    if dev.type == "cuda":
        return ["eager", "torch", "cuda-graph", "cuda-graph-fp16"]
    if dev.type == "cpu" and have("onnxruntime"):
        return ["eager", "torch", "onnx"]
    return ["eager", "torch"]


def _int8_reason(model) -> str | None:
    """Why the int8 encoder cannot be built here for ``model`` (``None``: it can)."""
    from .int8 import unavailable_reason
    return unavailable_reason(model)


def _auto_encoder(dev: torch.device, model=None) -> list[str]:
    if dev.type == "cuda":
        # Half precision passes the Dice bar for SAM ViT-B but not for LiteMedSAM's TinyViT,
        # whose propagated slices drift (docs/benchmark/design.md): 256-input models stay fp32.
        return ["torch-fp16"] if model is not None and model.input_size >= 1024 else ["torch"]
    if dev.type == "cpu":
        # ONNX Runtime first: OpenVINO fp32 used less CPU time per slice in isolation but was
        # slower than ONNX Runtime in the shared-CPU benchmark (its threads also slowed the
        # decoder running beside it), so it is offered by name only.
        order = (["onnx"] if have("onnxruntime") else []) + ["torch"]
        if INT8_BY_DEFAULT and have("onnxruntime") and has_native_int8() and _int8_reason(model) is None:
            order.insert(0, "onnx-int8")
        return order
    return ["torch"]


def _memo(model, key, build, reuse: bool = True):
    """Built paths live on the model object (a new SliceEngine per volume reuses its
    model's sessions; they go away with the model, a plain reference cycle)."""
    per_model = model.__dict__.setdefault("_radsam_paths", {})
    if key not in per_model or not reuse:
        per_model[key] = build()
    return per_model[key]


def make_encoder(model, backend: str = "auto", device=None, threads: int | None = None, reuse: bool = True,
                 batch_size: int | None = None):
    """A callable ``images (B, 3, S, S) float32 in [0, 1] -> embeddings (B, 256, 64, 64)``
    for ``SliceEngine(encode_fn=...)``. It has ``.backend`` (the path chosen) and
    ``.export_seconds`` (graph export time paid when it was built; 0 when cached).
    ``batch_size``: the most slices a PyTorch path runs at once (``RadSAMConfig.encoder_batch``).
    Built once per model object and arguments, then reused (``reuse=False``: build anew).
    Only SAM-family models have faster paths: any other model's own ``encode`` is used
    under ``auto`` (an :class:`AcceleratedModel` is already accelerated)."""
    if backend == "auto" and not isinstance(model, SamFamilyModel):
        return model.encode
    if backend not in ENCODER_BACKENDS:
        raise RadSAMError(f"unknown encoder backend '{backend}' (choose {', '.join(ENCODER_BACKENDS)})")
    return _memo(model, ("encoder", backend, str(device), threads, batch_size),
                 lambda: _make_encoder(model, backend, device, threads, batch_size), reuse)


def _make_encoder(model, backend, device, threads, batch_size=None):
    if backend not in ENCODER_BACKENDS:
        raise RadSAMError(f"unknown encoder backend '{backend}' (choose {', '.join(ENCODER_BACKENDS)})")
    dev = _device(model, device)
    if backend == "auto":
        for b in _auto_encoder(dev, model):
            try:
                return _build_encoder(model, b, dev, threads, batch_size)
            except Exception as e:  # noqa: BLE001 - any failure of an optional path falls back
                warnings.warn(f"RadSAM: encoder backend '{b}' unavailable ({type(e).__name__}: {e}); trying the next")
        raise RadSAMError("no encoder backend could be built")
    listed = available_encoders(model, dev, int8=False)
    if backend == "onnx-int8" and "onnx" in listed:
        # Built (or refused in one line, saying why) by int8.cached_int8_graph.
        return _build_encoder(model, backend, dev, threads, batch_size)
    if backend not in listed:
        raise RadSAMError(f"encoder backend '{backend}' is not available on {dev.type} here "
                          f"(available: {', '.join(available_encoders(model, dev))})")
    return _build_encoder(model, backend, dev, threads, batch_size)


def _build_encoder(model, backend, dev, threads, batch_size=None):
    if backend.startswith("torch"):
        if dev != model.device:
            raise RadSAMError(f"the model is on {model.device}, not {dev}: load it there for a torch path")
        prec = backend.partition("-")[2] or "fp32"
        return TorchEncoder(model, precision=prec, batch_size=batch_size or (1 if dev.type == "cpu" else 32))
    cpu = _cpu_model(model)
    if backend == "onnx":
        from .runtimes import OrtEncoder
        return OrtEncoder(cpu, threads)
    if backend == "onnx-int8":
        from .runtimes import OrtInt8Encoder
        return OrtInt8Encoder(cpu, threads)
    from .runtimes import OpenVinoEncoder
    return OpenVinoEncoder(cpu, threads)


def make_decoder(model, backend: str = "auto", threads: int | None = None, reuse: bool = True):
    """A callable with ``SamFamilyModel.decode``'s signature and result (inference only).

    ``eager`` returns ``model.decode`` itself (the reference). Built once per model object
    (``reuse=False``: build anew)."""
    if backend == "auto" and not isinstance(model, SamFamilyModel):
        return model.decode
    if backend not in DECODER_BACKENDS:
        raise RadSAMError(f"unknown decoder backend '{backend}' (choose {', '.join(DECODER_BACKENDS)})")
    if backend == "eager":
        return model.decode
    return _memo(model, ("decoder", backend, threads), lambda: _make_decoder(model, backend, threads), reuse)


def _make_decoder(model, backend, threads):
    dev = model.device
    if backend == "auto":
        order = {"cuda": ["cuda-graph", "torch"], "cpu": ["onnx", "torch"]}.get(dev.type, ["torch"])
        for b in order:
            if b not in available_decoders(model):
                continue
            try:
                return _build_decoder(model, b, threads)
            except Exception as e:  # noqa: BLE001
                warnings.warn(f"RadSAM: decoder backend '{b}' unavailable ({type(e).__name__}: {e}); trying the next")
        return model.decode
    if backend not in available_decoders(model):
        raise RadSAMError(f"decoder backend '{backend}' is not available on {dev.type} here "
                          f"(available: {', '.join(available_decoders(model))})")
    return _build_decoder(model, backend, threads)


def _build_decoder(model, backend, threads):
    if backend == "eager":
        return model.decode
    if backend == "torch":
        return FastDecoder(model, TorchDecoderCore(model))
    if backend.startswith("cuda-graph"):
        return FastDecoder(model, CudaGraphDecoderCore(model, "fp16" if backend.endswith("fp16") else "fp32"))
    from .runtimes import OrtDecoderCore
    return FastDecoder(model, OrtDecoderCore(_cpu_model(model), threads))


class AcceleratedModel:
    """``model`` with ``encode``/``decode`` replaced by faster paths; everything else
    (``info``, ``device``, ``input_size``, ``prompt_encoder``...) is the model's own.

    Pass it wherever a model goes (``SliceEngine``, ``Session``) for inference; training
    needs the plain model (the fast paths carry no gradients).
    """

    def __init__(self, model, encoder="auto", decoder="auto", threads: int | None = None):
        self.base = model
        self.encode = encoder if callable(encoder) else make_encoder(model, encoder, threads=threads)
        self.decode = decoder if callable(decoder) else make_decoder(model, decoder, threads=threads)

    def __getattr__(self, name):
        return getattr(self.base, name)

    @property
    def backends(self) -> dict:
        return {"encoder": getattr(self.encode, "backend", "torch"),
                "decoder": getattr(self.decode, "backend", "eager")}


def accelerate(model, encoder="auto", decoder="auto", threads: int | None = None) -> AcceleratedModel:
    """``model`` with the fastest encode/decode paths available (see module doc)."""
    return AcceleratedModel(model, encoder, decoder, threads)
