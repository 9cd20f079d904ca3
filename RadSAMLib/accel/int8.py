"""The image encoder in int8: ONNX Runtime static quantisation of the fp32 graph.

The fp32 encoder graph (``graphs.cached_graph``) is quantised with
``onnxruntime.quantization.quantize_static``: QDQ format, int8 weights per output channel,
uint8 activations, on the op types of :data:`SETTINGS`. Activation ranges are *static*:
measured once on real CT slices framed exactly as the engine frames them (its window and
``SliceFrame``), by ``scripts/calibrate_int8.py`` on training-role CT of ``../shared/data``
(never on amos_ct, the validation case), and shipped as a small JSON of per-tensor ranges
in ``RadSAMLib/weights/`` (statistics, no image data), keyed by the encoder's weights. So
every machine builds the same int8 graph without any CT at hand.

The quantised graph is cached next to the fp32 one, keyed by the fp32 graph's key, the
settings and the ranges file, and written atomically.

Quantising needs the ``onnx`` package (ONNX Runtime's quantiser is written on it), which
Slicer's install does not carry: there the int8 path is unavailable, asked for by name it
fails with one line, and ``auto`` stays on fp32. Whether ``auto`` uses it at all is decided
by measurement (``INT8_BY_DEFAULT`` in ``select.py``; docs/benchmark/speed.md).
"""
from __future__ import annotations

import hashlib
import inspect
import json
import time
from pathlib import Path

from ..errors import RadSAMError
from .cache import atomic_write, weights_sha256
from .graphs import cached_graph, graph_key, onnx_package_works

# What is quantised and how; part of the cached graph's key. Bump CALIBRATION when the
# calibration slices or method change (and re-run scripts/calibrate_int8.py).
SETTINGS = {
    "format": "QDQ",
    "op_types": ["Conv", "MatMul"],
    "weights_only_matmul": True,    # activation x activation MatMuls (attention) stay fp32
    "per_channel": True,
    "reduce_range": False,
    "activation": "QUInt8",
    "weight": "QInt8",
    "calibration": "minmax-v1",
}
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"


def ranges_path(model) -> Path:
    """The shipped activation ranges for ``model``'s image encoder weights."""
    return WEIGHTS_DIR / f"encoder-int8-ranges-{weights_sha256(model.image_encoder)[:16]}.json"


def unavailable_reason(model=None) -> str | None:
    """Why the int8 encoder cannot be built here (``None``: it can)."""
    if not onnx_package_works():
        return "it needs the 'onnx' package (pip install onnx), which does not import here"
    try:
        import onnxruntime.quantization as q
    except Exception as e:  # noqa: BLE001 - any import failure of the optional quantiser
        return f"onnxruntime.quantization does not import ({type(e).__name__}: {e})"
    if "calibration_cache_path" not in inspect.signature(q.quantize_static).parameters:
        return "it needs onnxruntime >= 1.22 (quantize_static with calibration_cache_path)"
    if model is not None and getattr(model, "image_encoder", None) is None:
        return "only SAM-family models have an exported encoder graph"
    if model is not None and not ranges_path(model).is_file():
        return (f"no int8 calibration ships for the image encoder of '{model.info.name}' "
                "(make one with scripts/calibrate_int8.py)")
    return None


def _settings_hash(ranges: Path) -> str:
    h = hashlib.sha256(json.dumps(SETTINGS, sort_keys=True).encode())
    h.update(ranges.read_bytes())
    return h.hexdigest()[:12]


def _quantise(fp32: Path, out: str, ranges: Path | None, reader=None, cache_out: Path | None = None) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    nodes = None
    if SETTINGS["weights_only_matmul"]:
        import onnx
        g = onnx.load(str(fp32), load_external_data=False).graph
        inits = {i.name for i in g.initializer}
        nodes = [n.name for n in g.node if n.op_type in SETTINGS["op_types"]
                 and (n.op_type != "MatMul" or any(i in inits for i in n.input))]
    quantize_static(str(fp32), out, reader, quant_format=QuantFormat.QDQ, per_channel=SETTINGS["per_channel"],
                    reduce_range=SETTINGS["reduce_range"], op_types_to_quantize=list(SETTINGS["op_types"]),
                    nodes_to_quantize=nodes, activation_type=getattr(QuantType, SETTINGS["activation"]),
                    weight_type=getattr(QuantType, SETTINGS["weight"]), calibrate_method=CalibrationMethod.MinMax,
                    calibration_cache_path=str(ranges if ranges is not None else cache_out))


def cached_int8_graph(model, rebuild: bool = False) -> tuple[Path, float]:
    """Path of the cached int8 encoder graph, quantising the fp32 one if missing (or
    ``rebuild``). Returns ``(path, seconds)`` (0 when cached). Raises ``RadSAMError`` when
    it cannot be built here (:func:`unavailable_reason`)."""
    why = unavailable_reason(model)
    if why:
        raise RadSAMError(f"encoder backend 'onnx-int8' is not available: {why}")
    fp32, secs = cached_graph(model, "encoder")
    ranges = ranges_path(model)
    path = fp32.with_name(graph_key(model, "encoder")[:-len(".onnx")] + f"-int8-{_settings_hash(ranges)}.onnx")
    if path.is_file() and path.stat().st_size > 0 and not rebuild:
        return path, secs
    t0 = time.perf_counter()
    atomic_write(path, lambda tmp: _quantise(fp32, tmp, ranges), suffix=".onnx")
    return path, secs + time.perf_counter() - t0


def calibrate(model, images, out: Path) -> Path:
    """Measure the activation ranges of ``model``'s fp32 encoder graph on ``images``
    (``(N, 3, S, S)`` float32 in [0, 1], framed as the engine frames slices) and write
    them to ``out`` (ONNX Runtime's calibration-cache JSON), atomically."""
    import tempfile

    import numpy as np
    from onnxruntime.quantization import CalibrationDataReader

    why = unavailable_reason()
    if why:
        raise RadSAMError(f"cannot calibrate: {why}")
    x = np.ascontiguousarray(np.asarray(images, dtype=np.float32))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"images": x[i:i + 1]} for i in range(len(x))])

        def get_next(self):
            return next(self.it, None)
    fp32, _ = cached_graph(model, "encoder")
    with tempfile.TemporaryDirectory(prefix="radsam-calib-") as d:
        tmp_out = Path(d) / "ranges.json"
        _quantise(fp32, str(Path(d) / "int8.onnx"), None, Reader(), cache_out=tmp_out)
        data = tmp_out.read_bytes()
    atomic_write(out, lambda tmp: Path(tmp).write_bytes(data), suffix=".json")
    return out
