"""Every faster inference path gives the eager fp32 result on real CT (mask Dice >= 0.99
per slice), the graph cache behaves, and ``auto`` picks a fast path.

CPU budget: the eager embeddings come from the shared ``abdomen_engine`` fixture (encoded
once per run); each exported encoder runs on 3 real slices only. Graphs are exported
into a temporary cache folder (~15 s), so the user's cache is never touched.
"""
from __future__ import annotations


import numpy as np
import pytest
import torch

from conftest import ABDOMEN_ORGANS, dice

# Exported graphs go to a cache folder of this module's own, never the user's.
pytestmark = pytest.mark.usefixtures("private_radsam_cache")

MIN_DICE = 0.99
SLICES = (6, 15, 24)  # three real abdominal slices across the volume


def organ_boxes(label_slice):
    """``{name: (x0, y0, x1, y1)}`` for the test organs present on a (j, i) label slice."""
    from RadSAMLib.prompts import box_of_mask
    return {name: box_of_mask(label_slice == v) for v, name in ABDOMEN_ORGANS.items() if (label_slice == v).sum() >= 10}


def masks_with(engine, k, boxes, embedding, decode):
    """Primary mask on slice ``k`` for each box, decoding ``embedding`` with ``decode``."""
    f = engine.frame
    out = {}
    for name, box in boxes.items():
        with torch.no_grad():
            logits, _ = decode(embedding, box=f.box_to_model(box))
        out[name] = (f.logits_to_slice(logits)[0] > 0).numpy()
    return out


def check_encoder(backend, model, abdomen, abdomen_engine):
    from RadSAMLib.accel import make_encoder
    enc = make_encoder(model, backend)
    assert enc.backend == backend
    eng = abdomen_engine
    labels = abdomen[2]
    worst = 1.0
    for k in SLICES:
        image = eng.frame.image_to_model(eng.window.apply(eng.slice(k)))[None]
        fast = enc(image).to(torch.float16)  # the engine caches fp16 whatever the path
        ref = eng.embedding(k)
        assert fast.shape == ref.shape == (1, 256, 64, 64)
        boxes = organ_boxes(labels[k])
        assert boxes, f"no test organ on slice {k}"
        a = masks_with(eng, k, boxes, ref, model.decode)
        b = masks_with(eng, k, boxes, fast, model.decode)
        for name in boxes:
            assert a[name].sum() > 20, f"eager mask of {name} on slice {k} is empty: the check would be vacuous"
            d = dice(a[name], b[name])
            worst = min(worst, d)
            assert d >= MIN_DICE, f"{backend} encoder: {name} slice {k} Dice {d:.4f} vs eager"
    return worst


def test_onnx_encoder_matches_eager(model, abdomen, abdomen_engine):
    pytest.importorskip("onnxruntime")
    check_encoder("onnx", model, abdomen, abdomen_engine)


def test_openvino_encoder_matches_eager(model, abdomen, abdomen_engine):
    pytest.importorskip("openvino")
    check_encoder("openvino", model, abdomen, abdomen_engine)


def test_onnx_decoder_matches_eager_for_every_prompt_kind(model, abdomen, abdomen_engine):
    """Box, box + mask, box + points, points only: masks and predicted IoUs agree."""
    pytest.importorskip("onnxruntime")
    from RadSAMLib.accel import make_decoder
    fast = make_decoder(model, "onnx")
    assert fast.backend == "onnx"
    eng, labels = abdomen_engine, abdomen[2]
    f = eng.frame
    for k in SLICES:
        emb = eng.embedding(k)
        for name, box in organ_boxes(labels[k]).items():
            obj = labels[k] == [v for v, n in ABDOMEN_ORGANS.items() if n == name][0]
            ys, xs = np.nonzero(obj)
            pts = f.slice_to_model(np.array([[xs.mean(), ys.mean()]]))
            prompts = [
                dict(box=f.box_to_model(box)),
                dict(box=f.box_to_model(box), mask=f.mask_to_model(obj, size=model.mask_input_size).numpy()),
                dict(box=f.box_to_model(box), points=pts, labels=np.array([1.0])),
                dict(points=pts, labels=np.array([1.0])),
            ]
            for p in prompts:
                with torch.no_grad():
                    l0, s0 = model.decode(emb, **p)
                l1, s1 = fast(emb, **p)
                assert l1.shape == l0.shape and s1.shape == s0.shape == (4,)
                for i in range(4):
                    a, b = (f.logits_to_slice(l0[i]) > 0).numpy(), (f.logits_to_slice(l1[i]) > 0).numpy()
                    if a.sum() + b.sum() >= 20:
                        assert dice(a, b) >= MIN_DICE, f"decoder {name} slice {k} {sorted(p)} mask {i}"
                assert torch.allclose(s0, s1, atol=1e-3), f"scores differ: {s0} vs {s1}"


def test_accelerated_propagation_matches_eager(model, abdomen, abdomen_engine):
    """A whole volume-level propagation (liver, 30 slices) with the auto decoder gives the
    eager result on every slice: differences do not compound along the propagation."""
    pytest.importorskip("onnxruntime")
    from RadSAMLib.accel import accelerate
    from RadSAMLib.engine import SliceEngine
    from RadSAMLib.prompts import SlicePrompt, box_of_mask
    from RadSAMLib.session import Session
    labels = abdomen[2]
    liver = labels == 5
    start = int(np.argmax(liver.sum(axis=(1, 2))))
    prompt = SlicePrompt(box=box_of_mask(liver[start]))
    fast_model = accelerate(model, encoder="torch", decoder="auto")
    assert fast_model.backends["decoder"] in ("onnx", "openvino")
    fast_engine = SliceEngine(fast_model, abdomen[1], axis=0)
    fast_engine.share_embeddings(abdomen_engine)  # nothing re-encoded
    n_before = abdomen_engine.encode_count
    results = []
    for eng in (abdomen_engine, fast_engine):
        s = Session(eng)
        s.segment(start, prompt, bounds=(0, eng.num_slices - 1))
        s.edit(start, (prompt.box[0] + 3, prompt.box[1] + 3), positive=False)
        results.append(s.mask.astype(bool))
    assert abdomen_engine.encode_count == n_before
    ref, got = results
    assert ref.sum() > 1000
    for k in range(ref.shape[0]):
        if ref[k].sum() + got[k].sum() >= 20:
            assert dice(ref[k], got[k]) >= MIN_DICE, f"slice {k}"


def test_graph_cache_is_keyed_atomic_and_rebuilt_when_corrupt(model, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("RADSAM_CACHE", str(tmp_path / "fresh"))  # empty: the first build exports
    from RadSAMLib.accel import cache_dir, make_decoder
    from RadSAMLib.accel.graphs import graph_key
    key = graph_key(model, "decoder")
    assert model.info.name in key and "opset" in key and "ort" in key
    first = make_decoder(model, "onnx", reuse=False)  # not the one earlier tests built
    path = cache_dir() / key
    assert path.is_file() and first.export_seconds > 0
    again = make_decoder(model, "onnx", reuse=False)
    assert again.export_seconds == 0.0  # cached: no second export
    path.write_bytes(b"not an onnx graph")  # e.g. a disk-full truncation
    rebuilt = make_decoder(model, "onnx", reuse=False)
    assert make_decoder(model, "onnx") is rebuilt  # built paths are reused per model
    assert rebuilt.export_seconds > 0 and path.stat().st_size > 1000
    assert not list(cache_dir().glob("*.tmp"))  # atomic writes leave no temporaries
    emb = torch.zeros(1, 256, 64, 64)
    logits, scores = rebuilt(emb, box=np.array([10.0, 10.0, 100.0, 100.0]))
    assert logits.shape == (4, 256, 256) and torch.isfinite(scores).all()


def test_auto_choice_and_errors(model):
    from RadSAMLib.accel import available_encoders, make_decoder, make_encoder
    from RadSAMLib.errors import RadSAMError
    enc = make_encoder(model, "torch")
    assert enc.backend == "torch"
    with pytest.raises(RadSAMError, match="unknown encoder backend"):
        make_encoder(model, "tensorrt9")
    with pytest.raises(RadSAMError, match="not available on cpu"):
        make_encoder(model, "torch-fp16")
    with pytest.raises(RadSAMError, match="unknown decoder backend"):
        make_decoder(model, "nope")
    assert make_decoder(model, "eager") == model.decode
    if "onnx" in available_encoders(model):
        assert make_encoder(model, "auto").backend == "onnx"


def test_decoder_graph_is_the_eager_decoder(model, abdomen, abdomen_engine):
    """The channels-last upscaling of ``DecoderGraph`` (exported to ONNX, run by the CUDA
    graph path) computes SAM's transposed convolutions + LayerNorm2d exactly."""
    from RadSAMLib.accel.graphs import DecoderGraph
    graph = DecoderGraph(model).eval()
    eng, labels = abdomen_engine, abdomen[2]
    f, k = eng.frame, SLICES[1]
    emb = eng.embedding(k).float()
    (name, box), = list(organ_boxes(labels[k]).items())[:1]
    obj = labels[k] == [v for v, n in ABDOMEN_ORGANS.items() if n == name][0]
    for mask in (None, f.mask_to_model(obj, size=model.mask_input_size)):
        with torch.no_grad():
            sparse, dense = model.prompt_embeddings(box=f.box_to_model(box), mask=mask)
            l0, s0 = model.mask_decoder.predict_masks(emb, model.prompt_encoder.get_dense_pe(), sparse, dense)
            l1, s1 = graph(emb, sparse, dense)
        assert l1.shape == l0.shape == (1, 4, model.input_size, model.input_size)
        assert float((l1 - l0).abs().max()) < 1e-3 * max(1.0, float(l0.abs().max()))
        assert torch.allclose(s0, s1, atol=1e-5)


def test_default_model_loads_without_timm():
    """LiteMedSAM's TinyViT needs four helpers from timm; importing timm (and torchvision
    with it) cost 2.8 s and ~200 MB per process, so the model loads without it, and a later
    ``import timm`` still gets the real package."""
    import subprocess
    import sys
    code = (
        "import sys\n"
        "from RadSAMLib.models import load_model\n"
        "m = load_model('litemedsam', device='cpu')\n"
        "assert 'timm' not in sys.modules and 'torchvision' not in sys.modules, sorted(k for k in sys.modules if 'timm' in k)\n"
        "import timm\n"
        "assert hasattr(timm, 'create_model'), 'a stand-in module leaked into sys.modules'\n"
        "from timm.models.layers import DropPath\n"
        "print('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-2000:]


def test_bench_speed_counts_the_slices_an_edit_reruns():
    """The edit timings are per slice re-run: a click where the mask already agrees
    changes no voxel (an empty Change) but still costs its re-propagation."""
    from RadSAMBench.speedbench import _time_edits
    from RadSAMLib.config import RadSAMConfig
    from RadSAMLib.prompts import SlicePrompt
    from RadSAMLib.session import Session
    from fakes import FakeModel
    vol = np.full((12, 50, 64), 40.0, np.float32)
    sess = Session.from_volume(FakeModel(), vol, config=RadSAMConfig(strategy="mask"))
    box = (10, 5, 30, 20)
    sess.segment(5, SlicePrompt(box=box), bounds=(2, 9))
    row = {}
    _time_edits(sess, (5, box, None), torch.device("cpu"), row)
    assert row["edit_conv_slices"] == 3     # the clicked slice, then one agreeing slice each way
    assert row["edited"] == 8               # the forced edit: every slice of the bounds

