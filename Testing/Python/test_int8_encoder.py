"""The int8 (static-quantised) CPU encoder: built from the shipped ranges, close to fp32 on
real CT, chosen by name; ``auto`` never picks it on a CPU without int8 units, nor without
the ``onnx`` package. (Whether it is accurate enough to be the default is measured by the
benchmark, docs/benchmark/speed.md, not here.)"""
from __future__ import annotations

import numpy as np
import pytest
import torch

# Exported graphs go to a cache folder of this module's own, never the user's.
pytestmark = pytest.mark.usefixtures("private_radsam_cache")

SLICES = (6, 24)
# Static int8 is far from fp32 on this encoder: relative error 0.73-0.79, correlation
# 0.70-0.75 on real slices (docs/benchmark/speed.md, "int8 static (session 8)"); fp32 ONNX
# Runtime is within 2e-6. These bounds catch a broken graph (wrong ranges, scales or
# layout: correlation near 0, error >= 1), not a loss of accuracy.
MAX_REL_ERR = 0.9
MIN_CORR = 0.6


def _flags(monkeypatch, *flags):
    from RadSAMLib.accel import cpu
    monkeypatch.setattr(cpu, "cpu_info", lambda: ("test CPU", frozenset(flags)))


def _int8_here(model) -> bool:
    pytest.importorskip("onnxruntime")
    from RadSAMLib.accel.int8 import unavailable_reason
    why = unavailable_reason(model)
    if why:
        pytest.skip(f"int8 encoder not buildable here: {why}")
    return True


def test_int8_encoder_is_close_to_fp32_on_real_ct(model, abdomen, abdomen_engine):
    from RadSAMLib.accel import available_encoders, make_encoder
    _int8_here(model)
    assert "onnx-int8" in available_encoders(model)
    enc = make_encoder(model, "onnx-int8")
    assert enc.backend == "onnx-int8"
    eng = abdomen_engine
    for k in SLICES:
        image = eng.frame.image_to_model(eng.window.apply(eng.slice(k)))[None]
        got = enc(image).float()
        ref = eng.embedding(k).float()   # eager fp32 (cached as fp16)
        assert got.shape == ref.shape == (1, 256, 64, 64)
        rel = float((got - ref).norm() / ref.norm())
        corr = float(np.corrcoef(got.flatten().numpy(), ref.flatten().numpy())[0, 1])
        assert rel < MAX_REL_ERR and corr > MIN_CORR, f"slice {k}: int8 embedding rel. error {rel:.3f}, corr {corr:.4f}"


def test_int8_graph_is_cached_keyed_and_rebuilt(model, monkeypatch):
    from RadSAMLib.accel import int8
    _int8_here(model)
    path, _ = int8.cached_int8_graph(model)
    assert path.is_file() and "-int8-" in path.name and path.name.startswith(model.info.name + "-encoder-")
    again, secs = int8.cached_int8_graph(model)
    assert again == path and secs == 0.0
    # Other settings: another file, never the old one.
    monkeypatch.setitem(int8.SETTINGS, "weights_only_matmul", not int8.SETTINGS["weights_only_matmul"])
    other, _ = int8.cached_int8_graph(model)
    assert other != path and other.is_file()
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")], "temporary file left behind"


def test_auto_never_picks_int8_without_int8_units(model, monkeypatch):
    from RadSAMLib.accel import select
    monkeypatch.setattr(select, "INT8_BY_DEFAULT", True)   # as if the benchmark had allowed it
    _flags(monkeypatch, "avx2", "fma", "avx512f", "avx512_bf16")   # no VNNI, no AMX
    assert "onnx-int8" not in select._auto_encoder(torch.device("cpu"), model)
    monkeypatch.setattr(select, "INT8_BY_DEFAULT", False)   # today's decision: fp32 even with VNNI
    _flags(monkeypatch, "avx2", "avx512f", "avx512_vnni", "amx_int8")
    assert "onnx-int8" not in select._auto_encoder(torch.device("cpu"), model)


def test_auto_picks_int8_only_with_int8_units_and_the_decision(model, monkeypatch):
    from RadSAMLib.accel import select
    _int8_here(model)
    monkeypatch.setattr(select, "INT8_BY_DEFAULT", True)
    for flag in ("avx512_vnni", "avx_vnni", "amx_int8"):
        _flags(monkeypatch, "avx2", flag)
        assert select._auto_encoder(torch.device("cpu"), model)[0] == "onnx-int8", flag


def test_missing_onnx_package_is_one_clear_line_and_auto_stays_fp32(model, monkeypatch):
    pytest.importorskip("onnxruntime")
    from RadSAMLib.accel import int8, make_encoder, select
    from RadSAMLib.errors import RadSAMError
    monkeypatch.setattr(int8, "onnx_package_works", lambda: False)
    monkeypatch.setattr(select, "INT8_BY_DEFAULT", True)
    _flags(monkeypatch, "avx2", "avx512f", "avx512_vnni")
    with pytest.raises(RadSAMError) as err:
        make_encoder(model, "onnx-int8", reuse=False)
    msg = str(err.value)
    assert "onnx-int8" in msg and "'onnx' package" in msg and "\n" not in msg
    assert "onnx-int8" not in select.available_encoders(model)
    assert select._auto_encoder(torch.device("cpu"), model)[0] == "onnx"   # what auto builds first


def test_cpu_flags_are_read_in_one_place(monkeypatch):
    from RadSAMBench.speedbench import cpu_description as bench_description
    from RadSAMLib.accel import cpu
    _flags(monkeypatch, "avx2", "avx512_vnni")
    assert cpu.has_native_int8()
    assert bench_description() == cpu.cpu_description() == \
        "test CPU; flags avx2 avx512_vnni; lacks fma avx512f avx_vnni avx512_bf16 amx_bf16 amx_int8"
    _flags(monkeypatch, "avx2", "avx512_bf16", "amx_bf16")
    assert not cpu.has_native_int8()

