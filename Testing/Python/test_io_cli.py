"""Reading/writing volumes with exact geometry, and the command line's error handling."""
import json
from pathlib import Path
import os

import numpy as np
import pytest
import SimpleITK as sitk

from RadSAMLib.cli import main
from RadSAMLib.errors import CheckpointError, ImageError, RadSAMError
from RadSAMLib.imageio import image_to_array, read_image, read_label, write_mask
from RadSAMLib.models import load_model
from conftest import ABDOMEN, DICOM, ROOT, need

OBLIQUE = sitk.VersorTransform((0.3, -0.2, 0.9), 0.4).GetMatrix()


def make_image(path, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), spacing=(0.7, 0.9, 3.0), size=(20, 16, 6), dim=3):
    if dim == 3:
        arr = np.arange(np.prod(size[::-1]), dtype=np.int16).reshape(size[::-1])
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing(spacing)
        img.SetOrigin((-12.5, 40.25, 7.0))
        img.SetDirection(direction)
    elif dim == 2:
        img = sitk.Image(20, 16, sitk.sitkInt16)
    else:
        img = sitk.Image([4, 4, 4, 3], sitk.sitkInt16)
    sitk.WriteImage(img, str(path))
    return path


@pytest.mark.parametrize("direction", [
    (1, 0, 0, 0, 1, 0, 0, 0, 1), (-1, 0, 0, 0, -1, 0, 0, 0, 1), (1, 0, 0, 0, 1, 0, 0, 0, -1), OBLIQUE])
@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd", ".mha"])
def test_mask_round_trip_keeps_voxels_and_geometry(tmp_path, direction, ext):
    src = read_image(make_image(tmp_path / f"ct{ext}", direction=direction))
    arr = image_to_array(src)
    mask = (arr.astype(int) % 7 == 0).astype(np.uint8)   # an irregular pattern: any flip would show
    out = write_mask(mask, src, tmp_path / f"mask{ext}")
    back = sitk.ReadImage(str(out))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), mask)
    np.testing.assert_allclose(back.GetSpacing(), src.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(back.GetOrigin(), src.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(back.GetDirection(), src.GetDirection(), atol=1e-6)
    # the same voxel lands at the same physical point
    idx = (3, 5, 2)
    np.testing.assert_allclose(back.TransformIndexToPhysicalPoint(idx), src.TransformIndexToPhysicalPoint(idx), atol=1e-4)


def test_write_is_atomic_and_never_clobbers(tmp_path):
    src = read_image(make_image(tmp_path / "ct.nrrd"))
    out = tmp_path / "mask.nii.gz"
    out.write_bytes(b"precious")
    with pytest.raises(RadSAMError, match="exists; use --force"):
        write_mask(np.zeros((6, 16, 20), np.uint8), src, out)
    assert out.read_bytes() == b"precious"
    with pytest.raises(RadSAMError, match="does not match the image grid"):
        write_mask(np.zeros((5, 16, 20), np.uint8), src, out, force=True)
    assert out.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nrrd", "mask.nii.gz"]  # no temp left


@pytest.mark.parametrize("dim, words", [(2, "is 2D"), (4, "is 4D")])
def test_not_3d_is_rejected(tmp_path, dim, words):
    p = make_image(tmp_path / "x.nrrd", dim=dim)
    with pytest.raises(ImageError, match=words):
        read_image(p)


def test_unreadable_and_missing_files(tmp_path):
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not an image")
    with pytest.raises(ImageError, match="cannot read image"):
        read_image(bad)
    with pytest.raises(ImageError, match="not found"):
        read_image(tmp_path / "nope.nrrd")


def test_label_on_another_grid_is_rejected(tmp_path):
    a = read_image(make_image(tmp_path / "a.nrrd"))
    make_image(tmp_path / "b.nrrd", spacing=(1, 1, 1))
    with pytest.raises(ImageError, match="same voxel grid"):
        read_label(tmp_path / "b.nrrd", a)


def test_dicom_series_geometry_matches_its_aligned_segmentation():
    need(DICOM)
    img = read_image(DICOM / "ct")
    seg = sitk.ReadImage(str(DICOM / "liver_seg.nrrd"))
    assert img.GetSize() == (512, 512, 3)
    np.testing.assert_allclose(img.GetSpacing(), seg.GetSpacing(), rtol=1e-3)
    np.testing.assert_allclose(img.GetOrigin(), seg.GetOrigin(), atol=1e-2)
    np.testing.assert_allclose(img.GetDirection(), seg.GetDirection(), atol=1e-4)
    assert abs(img.GetSpacing()[2] - 1.0) < 1e-3 and abs(img.GetSpacing()[0] - 0.81) < 0.01
    arr = image_to_array(img)
    assert arr.max() > 500 and arr.min() <= -1000          # HU (rescale applied): bone and air
    liver = sitk.GetArrayFromImage(seg) > 0
    assert liver.any()
    # voxel order agrees with the aligned segmentation: liver parenchyma is ~40-80 HU
    assert 0 < float(np.median(arr[liver])) < 150


# -- checkpoints -------------------------------------------------------------------------
def test_checkpoint_errors_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_model("sam_vit_b", checkpoint=tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match="needs a checkpoint"):
        load_model("sam_vit_b")
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(os.urandom(1000))
    with pytest.raises(CheckpointError, match="not a valid PyTorch weights file"):
        load_model("sam_vit_b", checkpoint=corrupt)
    import torch
    wrong = tmp_path / "wrong.pth"
    torch.save({"image_encoder.nope": torch.zeros(2)}, wrong)
    with pytest.raises(CheckpointError, match="does not match the model architecture"):
        load_model("sam_vit_b", checkpoint=wrong)
    with pytest.raises(CheckpointError, match="not a valid safetensors"):
        load_model(str(corrupt.with_suffix(".safetensors")) if corrupt.with_suffix(".safetensors").write_bytes(b"x") else "")
    with pytest.raises(RadSAMError, match="unknown model"):
        load_model("sam_vit_q")


def test_bundled_radsam_weights_are_checked_by_hash(tmp_path, monkeypatch):
    """The bundled delta is the one whose SHA-256 the code names; a damaged copy is refused."""
    from RadSAMLib.models import registry
    assert registry.sha256_of(registry.BUNDLED_RADSAM) == registry.BUNDLED_RADSAM_SHA256
    damaged = tmp_path / "radsam_litemedsam.safetensors"
    damaged.write_bytes(registry.BUNDLED_RADSAM.read_bytes()[:-10])
    monkeypatch.setattr(registry, "BUNDLED_RADSAM", damaged)
    with pytest.raises(CheckpointError, match="bundled RadSAM weights .* SHA-256"):
        load_model("radsam")


def test_pickled_code_is_never_executed(tmp_path):
    import pickle
    evil = tmp_path / "evil.pth"
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))
    evil.write_bytes(pickle.dumps({"model": Evil()}))
    with pytest.raises(CheckpointError):
        load_model("litemedsam", checkpoint=evil)
    assert not marker.exists()


# -- command line ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ct(tmp_path_factory):
    need(ABDOMEN)
    return str(ABDOMEN / "ct.nii.gz")


@pytest.mark.parametrize("extra, words", [
    (["--slice", "24", "--box", "44", "27", "200", "81"], "outside the image"),
    (["--slice", "24", "--box", "44", "27", "44", "81"], "degenerate box"),
    (["--slice", "24", "--box", "44", "27", "104", "81", "--bounds", "29", "0"], "reversed"),
    (["--slice", "24", "--box", "44", "27", "104", "81", "--bounds", "0", "30"], "outside the volume"),
    (["--slice", "24", "--box", "44", "27", "104", "81", "--bounds", "0", "20"], "prompt slice 24 is outside the bounds"),
    (["--slice", "40", "--box", "44", "27", "104", "81"], "prompt slice 40 is outside the volume"),
    (["--box", "44", "27", "104", "81"], "give the prompt slice"),
    (["--slice", "24", "--point", "500", "3"], "outside the image"),
    (["--slice", "24", "--box", "44", "27", "104", "81", "--edit", "3", "1", "1", "*"], "sign"),
    (["--slice", "24", "--box", "44", "27", "104", "81", "--model", "sam_vit_b"], "needs a checkpoint"),
])
def test_cli_bad_input_exits_2_with_one_line(ct, tmp_path, capsys, extra, words):
    out = tmp_path / "m.nii.gz"
    assert main(["segment", ct, "-o", str(out), "-q"] + extra) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("radsam: error:") and words in err and len(err.splitlines()) == 1
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_cli_bad_files_exit_2(tmp_path, capsys):
    assert main(["segment", str(tmp_path / "none.nii.gz"), "-o", str(tmp_path / "m.nrrd"), "--slice", "0", "--box", "0", "0", "1", "1"]) == 2
    assert "image not found" in capsys.readouterr().err
    flat = make_image(tmp_path / "flat.nrrd", dim=2)
    assert main(["segment", str(flat), "-o", str(tmp_path / "m.nrrd"), "--slice", "0", "--box", "0", "0", "1", "1"]) == 2
    assert "is 2D" in capsys.readouterr().err
    p = tmp_path / "p.json"
    p.write_text("{nope")
    assert main(["segment", str(flat), "-o", str(tmp_path / "m.nrrd"), "--prompts", str(p)]) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_cli_help_is_fast_and_subcommands_parse_their_own_arguments(capsys):
    """``radsam --help`` imports neither torch nor the benchmarks; ``radsam bench-speed``
    and ``radsam benchmark`` still parse (and reject) their own arguments."""
    import subprocess
    import sys
    code = ("import sys\nfrom RadSAMLib.cli import build_parser\nh = build_parser().format_help()\n"
            "assert 'bench-speed' in h and 'benchmark' in h, h\n"
            "assert 'torch' not in sys.modules, 'torch imported to build the parser'\nprint('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
    for name in ("bench-speed", "benchmark"):
        with pytest.raises(SystemExit) as e:
            main([name, "--no-such-option", "x"] if name == "bench-speed" else [name, "x", "--no-such-option"])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert f"radsam {name}" in err and "--no-such-option" in err


def test_benchmark_without_the_development_tools_is_one_line_error(capsys, monkeypatch):
    """The wheel does not carry RadSAMBench: ``radsam benchmark`` then says how to get it."""
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "RadSAMBench" else real(name, *a))
    for name in ("benchmark", "bench-speed"):
        assert main([name, "x"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "pip install -e bench" in err and f"radsam {name}" in err


def test_cli_refuses_to_overwrite(ct, tmp_path, capsys):
    out = tmp_path / "m.nii.gz"
    out.write_bytes(b"keep")
    assert main(["segment", ct, "-o", str(out), "--slice", "24", "--box", "44", "27", "104", "81"]) == 2
    assert "use --force" in capsys.readouterr().err and out.read_bytes() == b"keep"


def test_cli_segments_a_few_slices_and_reports_dice(ct, tmp_path, capsys):
    out = tmp_path / "liver.nrrd"
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps({"slice": 24, "box": [44, 27, 104, 81], "bounds": [23, 25],
                                   "edits": [{"slice": 25, "point": [70, 50], "positive": True}]}))
    rc = main(["segment", ct, "-o", str(out), "--prompts", str(prompts), "-q",
               "--reference", str(ABDOMEN / "seg.nii.gz"), "--label", "5", "--device", "cpu"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "3D Dice" in text and "s/slice" in text
    m = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    assert m.shape == (30, 101, 122) and m[23:26].any(axis=(1, 2)).all() and not m[:23].any() and not m[26:].any()
    gt = read_label(ABDOMEN / "seg.nii.gz", read_image(ct)) == 5
    from RadSAMLib.metrics import dice
    assert dice(m[23:26], gt[23:26]) > 0.85


def test_help_names_every_strategy_and_model_from_the_catalogue():
    """``radsam segment --help`` lists every propagation strategy (hybrid included) and
    every catalogued model; the catalogue's default strategy for the bundled fine-tune is
    the one its weights name."""
    from RadSAMLib.catalog import MODELS, entry
    from RadSAMLib.cli import build_parser
    from RadSAMLib.propagation import STRATEGIES
    import RadSAMLib
    top = " ".join(build_parser().format_help().split())
    sub = build_parser()._subparsers._group_actions[0].choices["segment"]
    text = " ".join(sub.format_help().split())
    for s in STRATEGIES:
        assert s in text and s in top
    assert "hybrid:5" in text
    for m in MODELS:
        assert m.name in text
    sidecar = Path(RadSAMLib.__file__).parent / "weights" / "radsam_litemedsam.json"
    assert json.loads(sidecar.read_text())["default_strategy"] == entry("radsam").default_strategy


def test_catalogue_config_and_slices_import_without_torch():
    """The Slicer module reads these before torch is installed."""
    import subprocess
    import sys
    code = ("import sys\nimport RadSAMLib.catalog, RadSAMLib.config, RadSAMLib.slices, RadSAMLib.files\n"
            "RadSAMLib.config.RadSAMConfig(strategy='hybrid:5')\n"
            "assert 'torch' not in sys.modules\nprint('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=str(ROOT))
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


@pytest.mark.parametrize("argv, fragment", [
    (["benchmark", "{pack}", "--encoder-backend", "onnx-int9", "--out", "{out}"], "--encoder-backend 'onnx-int9' is unknown"),
    (["bench-speed", "--encoders", "onnx,bogus"], "--encoders 'bogus' is unknown"),
    (["bench-speed", "--encoders", " , "], "--encoders needs at least one encoder backend"),
    (["bench-speed", "--felt-prefetch-cost", "--cost-prompt-at", "1.5"], "--cost-prompt-at is a share"),
    (["bench-speed", "--felt-prefetch-cost", "--cost-backgrounds", "same,mine"], "unknown background 'mine'"),
])
def test_bench_options_are_refused_by_name_before_any_model_loads(tmp_path, capsys, monkeypatch, argv, fragment):
    import RadSAMLib.models as models

    def tripwire(*a, **k):
        raise AssertionError("load_model called: the bad option was not caught up front")
    monkeypatch.setattr(models, "load_model", tripwire)
    pack = tmp_path / "pack"
    pack.mkdir()
    np.savez_compressed(pack / "a.npz", image=np.zeros((3, 8, 8), np.int16), label=np.ones((3, 8, 8), np.uint8),
                        spacing=np.array([1.0, 1.0, 1.0]))
    (pack / "labels.json").write_text('{"1": "blob"}')
    out = tmp_path / "out"
    assert main([a.format(pack=pack, out=out) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("radsam: error: ") and fragment in err, err
    assert not out.exists()
