"""What Slicer's install gives RadSAM is enough for every path it offers.

Slicer installs RadSAM's requirements with ``pip install --no-deps`` next to what Slicer
bundles (numpy, SimpleITK, packaging...) and what the PyTorch extension installs (torch
and its own requirements). Nothing else is there: no ``onnx``, no ``protobuf``, no
``torchvision``. So:

* the fast CPU path (ONNX Runtime encoder and decoder) must be chosen without the ``onnx``
  package, and give eager PyTorch's masks;
* SAM ViT-B/L/H must load without torchvision, and a missing package must be named.

The fast tests block the packages Slicer lacks (``sys.modules[name] = None``) in a
subprocess; the slow one builds such an environment for real and installs the list into
it the way Slicer does.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "RadSAM"))

from RadSAMSlicerLib import dependencies  # noqa: E402

# Not in Slicer, not installed by the PyTorch extension, not in REQUIREMENTS.
# (timm is absent too; loading LiteMedSAM without it is test_speed_paths' concern.)
ABSENT_IN_SLICER = ("onnx", "onnxscript", "google.protobuf", "ml_dtypes", "torchvision")

BLOCK = "import sys\nfor _m in {mods!r}:\n    sys.modules[_m] = None\n"

# Run in a child: the default model, auto paths, one box on a synthetic slice (a bright
# disc on soft tissue) through the fast paths and through eager PyTorch.
FAST_PATHS = """
import importlib, json, warnings
import numpy as np, torch
for name in ("onnx", "google.protobuf", "torchvision"):
    try:
        importlib.import_module(name)
    except ImportError:
        pass
    else:
        raise SystemExit(name + " is importable: the test would prove nothing")
from RadSAMLib.accel import accelerate, cpu, make_encoder, select
from RadSAMLib.errors import RadSAMError
from RadSAMLib.models import load_model
model = load_model(device="cpu")
# As if int8 were allowed by default on a CPU with VNNI: without onnx, auto stays fp32,
# and the int8 path asked for by name says why in one line.
select.INT8_BY_DEFAULT = True
cpu.cpu_info = lambda: ("test CPU", frozenset({"avx512f", "avx512_vnni"}))
try:
    make_encoder(model, "onnx-int8")
    int8_error = None
except RadSAMError as e:
    int8_error = str(e)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    fast = accelerate(model)
S = model.input_size
yy, xx = np.mgrid[:S, :S]
img = np.where((yy - 120) ** 2 + (xx - 140) ** 2 < 40 ** 2, 0.9, 0.35).astype(np.float32)
img = torch.from_numpy(np.repeat(img[None, None], 3, axis=1))
box = np.array([95.0, 75.0, 185.0, 165.0])
with torch.no_grad():
    e_ref, e_fast = model.encode(img), fast.encode(img)
    ref = model.decode(e_ref, box=box)[0][0] > 0
    got = fast.decode(e_fast, box=box)[0][0] > 0
inter = int((ref & got).sum())
print(json.dumps({"backends": fast.backends, "warnings": [str(w.message) for w in caught], "int8_error": int8_error,
                  "ref": int(ref.sum()), "got": int(got.sum()), "inter": inter,
                  "emb_diff": float((e_ref - e_fast).abs().max())}))
"""


def _child_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(PYTHONPATH=str(ROOT), PYTHONNOUSERSITE="1", **extra)
    return env


def _run(python, code: str, env: dict, timeout=600) -> str:
    r = subprocess.run([str(python), "-c", code], capture_output=True, text=True, env=env, timeout=timeout)
    assert r.returncode == 0, (r.stdout[-2000:] + r.stderr[-4000:])
    lines = r.stdout.strip().splitlines()
    return lines[-1] if lines else ""


def _check_fast_paths(result: dict) -> None:
    assert result["backends"] == {"encoder": "onnx", "decoder": "onnx"}, result
    if "int8_error" in result:  # the child that blocks onnx
        err = result["int8_error"] or ""
        assert "onnx-int8" in err and "'onnx' package" in err and "\n" not in err, result
    assert not [w for w in result["warnings"] if "unavailable" in w], result["warnings"]
    assert result["ref"] > 1000, f"the eager mask is (almost) empty: the comparison would be vacuous ({result})"
    d = 2 * result["inter"] / (result["ref"] + result["got"])
    assert d >= 0.99, f"ONNX Runtime mask Dice {d:.4f} vs eager ({result})"


def test_onnx_runtime_paths_are_chosen_without_the_onnx_package(tmp_path):
    """``onnx`` and ``protobuf`` blocked, as in Slicer: the encoder and decoder are still
    exported, ONNX Runtime runs both, and the mask is eager PyTorch's. (That the graph is
    byte for byte the one torch writes with ``onnx``: the slow test below.)"""
    code = BLOCK.format(mods=ABSENT_IN_SLICER) + FAST_PATHS
    _check_fast_paths(json.loads(_run(sys.executable, code, _child_env(RADSAM_CACHE=str(tmp_path / "cache")))))


@pytest.fixture
def fresh_sam_import(monkeypatch):
    """``sam_import`` as in a new process: no ``segment_anything`` module imported, and its
    private package under a name not loaded yet (restored afterwards)."""
    from RadSAMLib.models import sam_import
    for name in [n for n in sys.modules if n == "segment_anything" or n.startswith("segment_anything.")]:
        monkeypatch.delitem(sys.modules, name)
    private = f"RadSAMLib.models._segment_anything_test_{os.getpid()}_{len(sys.modules)}"
    monkeypatch.setattr(sam_import, "_PRIVATE", private)
    yield sam_import
    for name in [n for n in sys.modules if n == private or n.startswith(private + ".")]:
        del sys.modules[name]


def test_sam_model_loads_without_torchvision(tmp_path, monkeypatch, fresh_sam_import):
    """segment-anything's package ``__init__`` imports torchvision (for its predictor);
    its model code does not, and Slicer has no torchvision: a SAM ViT-B checkpoint loads,
    and the real package is left alone."""
    import torch
    from RadSAMLib.models import load_model
    monkeypatch.setitem(sys.modules, "torchvision", None)
    torch.manual_seed(0)
    sam = fresh_sam_import.sam_model_registry()["vit_b"](checkpoint=None)
    path = tmp_path / "sam_vit_b.pth"
    torch.save({k: v.half() for k, v in sam.state_dict().items()}, path)   # half the bytes to write
    try:
        m = load_model("sam_vit_b", checkpoint=path, device="cpu")
    finally:
        path.unlink()   # 180 MB
    assert m.info.name == "sam_vit_b" and m.input_size == 1024
    assert torch.equal(m.mask_decoder.iou_token.weight.detach(), sam.mask_decoder.iou_token.weight.detach().half().float())
    assert "segment_anything" not in sys.modules, "the real package was half-imported"
    with pytest.raises(ImportError, match="torchvision"):   # the real one still needs it, and says so
        import segment_anything  # noqa: F401


def test_sam_import_names_what_is_missing(tmp_path, monkeypatch, fresh_sam_import):
    """Without segment-anything, or when its model code imports a package that is not
    there, the message names the package that is missing."""
    from RadSAMLib.errors import CheckpointError
    from RadSAMLib.models import load_model
    monkeypatch.setitem(sys.modules, "segment_anything", None)
    with pytest.raises(CheckpointError, match="'segment-anything' package, which is not installed"):
        load_model("sam_vit_b", checkpoint="never-read.pth", device="cpu")

    fake = tmp_path / "segment_anything"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise RuntimeError('the package __init__ must not run')\n")
    (fake / "build_sam.py").write_text("import radsam_test_absent_dependency\n")
    monkeypatch.delitem(sys.modules, "segment_anything")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(CheckpointError, match="'radsam_test_absent_dependency' package"):
        load_model("sam_vit_b", checkpoint="never-read.pth", device="cpu")
    assert not [n for n in sys.modules if n.startswith(fresh_sam_import._PRIVATE)], "a failed import left modules"


# -- the real thing: a Slicer-like environment, the list installed the Slicer way ----------
def _distribution_closure(names) -> dict:
    """``{distribution: [top-level entries in site-packages]}`` for ``names`` and
    everything they require (what pip without --no-deps installs), as installed here."""
    from packaging.requirements import Requirement
    out, todo = {}, list(names)
    while todo:
        try:
            dist = importlib.metadata.distribution(todo.pop())
        except importlib.metadata.PackageNotFoundError:
            continue   # an optional platform package not installed here
        key = dist.metadata["Name"].lower().replace("_", "-")
        if key in out:
            continue
        out[key] = sorted({f.parts[0] for f in dist.files or () if ".." not in f.parts
                           and f.parts[0] != "__pycache__" and not f.parts[0].endswith(".pth")})
        for req in map(Requirement, dist.requires or ()):
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return out


@pytest.mark.slow
def test_slicer_install_runs_the_onnx_runtime_paths(tmp_path):
    """A fresh virtual environment that sees only Slicer's bundled packages and torch with
    its requirements (the PyTorch extension installs it with light-the-torch, which brings
    them); RadSAM's list installed into it as Slicer does (``install_steps``: pip,
    ``--no-deps``). Then nothing is missing, SAM's model code imports, and the default
    model runs the ONNX Runtime encoder and decoder with eager's mask."""
    import torch
    venv = tmp_path / "slicer-python"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    env = _child_env(RADSAM_CACHE=str(tmp_path / "cache"))
    # dependencies.py alone: the RadSAMSlicerLib package needs Slicer's vtk.
    deps = ("import importlib.util as u, json, sys\n"
            f"spec = u.spec_from_file_location('dependencies', {str(Path(dependencies.__file__))!r})\n"
            "d = sys.modules['dependencies'] = u.module_from_spec(spec)\nspec.loader.exec_module(d)\n")

    # What Slicer bundles (numpy, SimpleITK, packaging) and what the PyTorch extension adds.
    provided = tmp_path / "provided"
    provided.mkdir()
    site = Path(torch.__file__).parent.parent
    for dist, entries in _distribution_closure(["numpy", "SimpleITK", "packaging", "torch"]).items():
        for entry in entries:
            if (site / entry).exists() and not (provided / entry).exists():
                (provided / entry).symlink_to(site / entry)
    venv_site = _run(py, "import sysconfig; print(sysconfig.get_paths()['purelib'])", env)
    Path(venv_site, "slicer_provided.pth").write_text(str(provided) + "\n")
    for name in ("onnxruntime", "segment_anything", "safetensors", "onnx", "google.protobuf", "torchvision", "timm"):
        code = f"import importlib\ntry:\n    importlib.import_module({name!r})\nexcept ImportError:\n    print('absent')"
        assert _run(py, code, env) == "absent", f"{name} is already there: the environment is not Slicer's"
    assert _run(py, "import torch, numpy, SimpleITK; print('ok')", env) == "ok"

    steps = json.loads(_run(py, deps + "print(json.dumps([s.argv for s in d.install_steps(d.to_install(), "
                                   "sys.executable)]))", env))
    want = [req for _, req, how in dependencies.REQUIREMENTS if how == "pip"]
    assert [a[a.index("install") + 1] for a in steps] == want, steps   # torch is there: pip steps only
    for argv in steps:
        assert "--no-deps" in argv
        r = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
        assert r.returncode == 0, f"{' '.join(argv)}: {r.stdout[-1000:]}{r.stderr[-2000:]}"

    assert _run(py, deps + "print(d.missing())", env) == "[]"
    sam = ("from RadSAMLib.models.sam_import import sam_model_registry\n"
           "print(sorted(sam_model_registry()))")
    assert _run(py, sam, env) == "['default', 'vit_b', 'vit_h', 'vit_l']"
    _check_fast_paths(json.loads(_run(py, FAST_PATHS, env)))

    # The graphs written there without onnx are the ones torch writes here with it.
    pytest.importorskip("onnx", reason="compares with torch's export through the onnx package")
    from RadSAMLib.accel.graphs import export
    from RadSAMLib.models import load_model
    default = load_model(device="cpu")
    for part in ("encoder", "decoder"):
        (written,) = (tmp_path / "cache").glob(f"*-{part}-*.onnx")
        export(default, part, tmp_path / f"{part}.onnx")
        assert (tmp_path / f"{part}.onnx").read_bytes() == written.read_bytes(), part


@pytest.mark.slow
def test_onnx_runtime_on_python_3_9_runs_the_graph_exported_without_onnx(tmp_path, model):
    """Slicer 5.6/5.8: Python 3.9 and a numpy 1.x, where pip picks an older onnxruntime.
    Installed --no-deps there, it loads and runs the decoder graph written without onnx.
    (torch is not installed on 3.9 here: the export itself runs on this Python.)"""
    import glob
    import shutil

    import numpy as np
    pyenv = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates = [shutil.which("python3.9"), *sorted(glob.glob(os.path.join(pyenv, "versions", "3.9*", "bin", "python3.9")))]
    python39 = next((c for c in candidates if c and subprocess.run(
        [c, "-c", "import sys; assert sys.version_info[:2] == (3, 9)"], capture_output=True).returncode == 0), None)
    if python39 is None:
        pytest.skip("no Python 3.9 here")
    graph = tmp_path / "decoder.onnx"
    code = BLOCK.format(mods=ABSENT_IN_SLICER) + (
        "import sys\nfrom pathlib import Path\nfrom RadSAMLib.accel.graphs import export\n"
        "from RadSAMLib.models import load_model\nexport(load_model('litemedsam', device='cpu'), 'decoder', "
        "Path(sys.argv[1]))\nprint('ok')")
    r = subprocess.run([sys.executable, "-c", code, str(graph)], capture_output=True, text=True, env=_child_env(),
                       timeout=600)
    assert r.returncode == 0 and graph.is_file(), r.stderr[-3000:]
    venv = tmp_path / "py39"
    subprocess.run([python39, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    for args in (["numpy<2"], [*dependencies.pip_arguments("onnxruntime>=1.17", (3, 9)).split()]):
        r = subprocess.run([str(py), "-m", "pip", "install", "-q", *args], capture_output=True, text=True,
                           env=_child_env(), timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
    emb = np.random.default_rng(0).standard_normal((1, 256, 64, 64)).astype(np.float32)
    np.save(tmp_path / "emb.npy", emb)
    run = ("import sys, numpy as np, onnxruntime as ort\n"
           "s = ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])\n"
           "e = np.load(sys.argv[2])\n"
           "logits, scores = s.run(None, {'embedding': e, 'sparse': np.zeros((1, 2, 256), np.float32), "
           "'dense': np.zeros((1, 256, 64, 64), np.float32)})\n"
           "np.save(sys.argv[3], logits)\nprint(sys.version_info[:2], ort.__version__)")
    r = subprocess.run([str(py), "-c", run, str(graph), str(tmp_path / "emb.npy"), str(tmp_path / "out.npy")],
                       capture_output=True, text=True, env=_child_env(), timeout=300)
    assert r.returncode == 0 and "(3, 9)" in r.stdout, r.stdout + r.stderr[-2000:]
    import torch
    from RadSAMLib.accel.graphs import DecoderGraph
    with torch.no_grad():
        ref = DecoderGraph(model).eval()(torch.from_numpy(emb), torch.zeros(1, 2, 256), torch.zeros(1, 256, 64, 64))[0]
    got = np.load(tmp_path / "out.npy")
    assert got.shape == (1, 4, 256, 256)
    assert float(np.abs(got - ref.numpy()).max()) < 1e-3 * max(1.0, float(ref.abs().max()))
