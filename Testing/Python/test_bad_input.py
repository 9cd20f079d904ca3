"""Bad input never ends in a traceback or a wrong mask (issue 16).

A table of ``radsam segment`` command lines, each with the exit code, a fragment of the
one-line message and the state the output path must be left in. Every bad case must stop
before a model loads (``load_model`` is replaced by a tripwire), so the table runs in
seconds; the valid controls run the whole pipeline with the stand-in model of
``fakes.py`` (it segments exactly its prompt, so the right mask is known) and, slow-marked,
with the real default model on real CT. Interrupts (SIGINT, SIGTERM) run the real CLI in a
subprocess, slow-marked.

Synthetic image: ``(k, j, i) = (10, 40, 50)``, so on axis 0 a slice is 40 rows (y 0..39)
by 50 columns (x 0..49) and slices are 0..9.
"""
from __future__ import annotations

import gzip
import json
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from RadSAMLib.cli import main
from conftest import ABDOMEN, DICOM, ROOT, need, dice

SHAPE = (10, 40, 50)                 # (k, j, i)
P = ["--slice", "5", "--box", "10", "8", "30", "28"]   # a valid prompt on the synthetic image
PB = P + ["--bounds", "3", "7"]


# -- the inputs ---------------------------------------------------------------------------
def _ct(spacing=(0.8, 0.9, 2.5), dtype=np.int16, size=SHAPE):
    rng = np.random.default_rng(0)
    arr = (40 + 30 * rng.standard_normal(size)).astype(dtype)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin((-10.0, 20.0, 5.0))
    return img


def _cut(src: Path, dst: Path):
    b = src.read_bytes()
    dst.write_bytes(b[: len(b) // 2])


def _nifti_with_pixdim(src: Path, dst: Path, pixdim):
    b = bytearray(src.read_bytes())
    pd = list(struct.unpack("<8f", b[76:108]))
    pd[1:4] = pixdim
    b[76:108] = struct.pack("<8f", *pd)
    with gzip.open(dst, "wb") as f:
        f.write(bytes(b))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    ct = _ct()
    sitk.WriteImage(ct, str(d / "ct.nrrd"))
    for ext in ("nii.gz", "nii", "nrrd", "mha"):
        sitk.WriteImage(ct, str(d / f"full.{ext}"), useCompression=True)
        _cut(d / f"full.{ext}", d / f"cut.{ext}")
    _nifti_with_pixdim(d / "full.nii", d / "zero_spacing.nii.gz", (0.8, 0.0, 2.5))
    _nifti_with_pixdim(d / "full.nii", d / "neg_spacing.nii.gz", (-0.8, 0.9, 2.5))
    _nifti_with_pixdim(d / "full.nii", d / "nan_spacing.nii.gz", (float("nan"), 0.9, 2.5))
    mha = (d / "full.mha").read_bytes()
    (d / "zero_spacing.mha").write_bytes(re.sub(rb"ElementSpacing = [^\n]*", b"ElementSpacing = 0.8 0 2.5", mha))
    for name, bad in (("nan_voxels", np.nan), ("inf_voxels", np.inf)):
        f = sitk.GetArrayFromImage(ct).astype(np.float32)
        f[4, 10, 10] = bad
        im = sitk.GetImageFromArray(f)
        im.CopyInformation(ct)
        sitk.WriteImage(im, str(d / f"{name}.nrrd"))
    sitk.WriteImage(sitk.Image(50, 40, sitk.sitkInt16), str(d / "flat.nrrd"))
    sitk.WriteImage(sitk.Image([5, 5, 5, 3], sitk.sitkInt16), str(d / "four_d.nrrd"))
    sitk.WriteImage(sitk.Image([50, 40, 10], sitk.sitkVectorUInt8, 3), str(d / "rgb.nrrd"))
    sitk.WriteImage(sitk.Image(50, 40, sitk.sitkUInt8), str(d / "slice.png"))
    (d / "text.nii.gz").write_text("not an image")
    (d / "noise.nrrd").write_bytes(os.urandom(4000))
    (d / "empty.nii").write_bytes(b"")
    (d / "no_dicom").mkdir()
    (d / "no_dicom" / "readme.txt").write_text("no DICOM here")

    labels = np.zeros(SHAPE, np.uint8)
    labels[3:8, 8:29, 10:31] = 5
    seg = sitk.GetImageFromArray(labels)
    seg.CopyInformation(ct)
    sitk.WriteImage(seg, str(d / "seg.nii.gz"))
    other = sitk.GetImageFromArray(labels)
    other.SetSpacing((1.0, 1.0, 1.0))
    sitk.WriteImage(other, str(d / "seg_other_grid.nii.gz"))
    zero = sitk.GetImageFromArray(np.zeros(SHAPE, np.uint8))
    zero.CopyInformation(ct)
    sitk.WriteImage(zero, str(d / "mask_empty.nrrd"))
    one = np.zeros(SHAPE, np.uint8)
    one[6, 8:29, 10:31] = 1          # on slice 6 only
    m = sitk.GetImageFromArray(one)
    m.CopyInformation(ct)
    sitk.WriteImage(m, str(d / "mask_slice6.nrrd"))
    (d / "binary.json").write_bytes(bytes(range(256)) * 4)
    (d / "prompts_dir.json").mkdir()
    (d / "utf16.json").write_bytes(json.dumps({"slice": 5, "box": [10, 8, 30, 28]}).encode("utf-16"))
    (d / "deep.json").write_text("[" * 100000 + "]" * 100000)
    (d / "ckpt.safetensors.txt").write_text("x")
    return d


# -- the table ----------------------------------------------------------------------------
# (id, argv after "segment {img} -o {out} -q" (or the whole argv when it starts with
#  "segment"), message fragment, output state before the run: None (absent), "file",
#  "dir", "dangling", "link", "ro" (a read-only folder), "parentfile", "img").
# A "prompts" entry is {"json": text}: written to {json} and passed as --prompts.
def J(obj) -> dict:
    return {"json": obj if isinstance(obj, str) else json.dumps(obj)}


BOX = [10, 8, 30, 28]
CASES = [
    # --slice
    ("slice-float", ["--slice", "24.7", "--box", "10", "8", "30", "28"], "argument --slice: invalid int value: '24.7'", None),
    ("slice-word", ["--slice", "five", "--box", "10", "8", "30", "28"], "invalid int value: 'five'", None),
    ("slice-negative", ["--slice", "-1", "--box", "10", "8", "30", "28"], "prompt slice -1 is outside the volume (0..9", None),
    ("slice-past-end", ["--slice", "10", "--box", "10", "8", "30", "28"], "prompt slice 10 is outside the volume", None),
    ("slice-exp", ["--slice", "1e3", "--box", "10", "8", "30", "28"], "invalid int value: '1e3'", None),
    ("slice-missing", ["--box", "10", "8", "30", "28"], "give the prompt slice", None),
    ("prompt-missing", ["--slice", "5"], "empty prompt on slice 5", None),
    # --box
    ("box-nan", ["--slice", "5", "--box", "nan", "8", "30", "28"], "argument --box: not a finite number: 'nan'", None),
    ("box-all-nan", ["--slice", "5", "--box", "nan", "nan", "nan", "nan"], "not a finite number: 'nan'", None),
    ("box-inf", ["--slice", "5", "--box", "10", "8", "inf", "28"], "not a finite number: 'inf'", None),
    ("box-neg-inf", ["--slice", "5", "--box", "-inf", "8", "30", "28"], "argument --box: expected 4 arguments", None),
    ("box-overflow", ["--slice", "5", "--box", "10", "8", "1e999", "28"], "not a finite number: '1e999'", None),
    ("box-word", ["--slice", "5", "--box", "ten", "8", "30", "28"], "argument --box: not a number: 'ten'", None),
    ("box-degenerate-x", ["--slice", "5", "--box", "10", "8", "10", "28"], "degenerate box (10, 8, 10, 28)", None),
    ("box-degenerate-y", ["--slice", "5", "--box", "10", "8", "30", "8"], "degenerate box", None),
    ("box-reversed", ["--slice", "5", "--box", "30", "28", "10", "8"], "need x0 < x1 and y0 < y1", None),
    ("box-outside-x", ["--slice", "5", "--box", "10", "8", "50", "28"], "outside the image on slice 5 (x in 0..49, y in 0..39)", None),
    ("box-outside-y", ["--slice", "5", "--box", "10", "8", "30", "40"], "outside the image", None),
    ("box-negative", ["--slice", "5", "--box", "-1", "8", "30", "28"], "outside the image", None),
    ("box-three-numbers", ["--slice", "5", "--box", "10", "8", "30"], "argument --box: expected 4 arguments", None),
    # --point / --negative-point
    ("point-nan", ["--slice", "5", "--point", "nan", "20"], "argument --point: not a finite number: 'nan'", None),
    ("point-inf", ["--slice", "5", "--point", "20", "inf"], "not a finite number: 'inf'", None),
    ("point-word", ["--slice", "5", "--point", "x", "20"], "argument --point: not a number: 'x'", None),
    ("point-outside", ["--slice", "5", "--point", "50", "20"], "point (50, 20) is outside the image on slice 5", None),
    ("point-negative", ["--slice", "5", "--point", "-0.5", "20"], "outside the image", None),
    ("point-one-number", ["--slice", "5", "--point", "20"], "argument --point: expected 2 arguments", None),
    ("negative-point-alone", ["--slice", "5", "--negative-point", "20", "20"], "has only negative points", None),
    ("negative-points-alone", ["--slice", "5", "--negative-point", "20", "20", "--negative-point", "5", "5"],
     "has only negative points", None),
    ("negative-point-nan", ["--slice", "5", "--point", "20", "20", "--negative-point", "nan", "5"],
     "argument --negative-point: not a finite number", None),
    ("negative-point-outside", ["--slice", "5", "--point", "20", "20", "--negative-point", "20", "45"], "point (20, 45) is outside", None),
    # --bounds
    ("bounds-reversed", P + ["--bounds", "7", "3"], "bounds are reversed: bottom slice 7 is above top slice 3", None),
    ("bounds-past-end", P + ["--bounds", "0", "10"], "bounds 0..10 are outside the volume (slices 0..9)", None),
    ("bounds-negative", P + ["--bounds", "-1", "9"], "bounds -1..9 are outside the volume", None),
    ("bounds-exclude-prompt", P + ["--bounds", "6", "9"], "prompt slice 5 is outside the bounds 6..9", None),
    ("bounds-float", P + ["--bounds", "0.5", "9"], "argument --bounds: invalid int value: '0.5'", None),
    ("bounds-word", P + ["--bounds", "a", "9"], "invalid int value: 'a'", None),
    ("bounds-one", P + ["--bounds", "3"], "argument --bounds: expected 2 arguments", None),
    # --edit
    ("edit-sign", PB + ["--edit", "4", "20", "20", "*"], "got sign '*'", None),
    ("edit-slice-word", PB + ["--edit", "k", "20", "20", "+"], "--edit takes K X Y +|- with an integer K", None),
    ("edit-slice-float", PB + ["--edit", "4.5", "20", "20", "+"], "with an integer K", None),
    ("edit-x-nan", PB + ["--edit", "4", "nan", "20", "+"], "--edit X must be a finite number", None),
    ("edit-y-inf", PB + ["--edit", "4", "20", "inf", "-"], "--edit Y must be a finite number", None),
    ("edit-outside-image", PB + ["--edit", "4", "20", "40", "+"], "edit point (20, 40) is outside the image on slice 4", None),
    ("edit-outside-bounds", PB + ["--edit", "8", "20", "20", "+"], "edit slice 8 is outside the bounds 3..7", None),
    ("edit-outside-volume", P + ["--edit", "12", "20", "20", "+"], "edit slice 12 is outside the volume", None),
    ("edit-three-args", PB + ["--edit", "4", "20", "20"], "argument --edit: expected 4 arguments", None),
    # --strategy
    ("strategy-nan", P + ["--strategy", "box:nan"], "strategy 'box:nan': margin and grow must be finite", None),
    ("strategy-inf", P + ["--strategy", "box:inf"], "must be finite", None),
    ("strategy-negative", P + ["--strategy", "box:-1"], "not negative", None),
    ("strategy-grow-nan", P + ["--strategy", "mask+box:5:nan"], "must be finite", None),
    ("strategy-hybrid-nan", P + ["--strategy", "hybrid:nan"], "must be finite", None),
    ("strategy-unknown", P + ["--strategy", "boxes"], "unknown propagation strategy 'boxes'", None),
    ("strategy-too-many", P + ["--strategy", "box:1:2:3"], "expected kind[:margin[:grow]]", None),
    ("strategy-word", P + ["--strategy", "box:wide"], "margin and grow must be numbers", None),
    # --axis
    ("axis-3", P + ["--axis", "3"], "argument --axis: invalid choice: 3", None),
    ("axis-negative", P + ["--axis", "-1"], "invalid choice: -1", None),
    ("axis-word", P + ["--axis", "z"], "argument --axis: invalid int value: 'z'", None),
    ("axis-1-slice-outside", ["--axis", "1", "--slice", "40", "--box", "10", "2", "30", "8"],
     "prompt slice 40 is outside the volume (0..39 along axis 1)", None),
    ("axis-2-box-outside", ["--axis", "2", "--slice", "20", "--box", "10", "2", "30", "10"],
     "outside the image on slice 20 (x in 0..39, y in 0..9)", None),
    # model, checkpoint, device, backends
    ("model-unknown", P + ["--model", "sam_vit_q"], "--model 'sam_vit_q' is unknown", None),
    ("model-sam-no-checkpoint", P + ["--model", "sam_vit_b"], "needs a checkpoint file", None),
    ("model-safetensors-missing", P + ["--model", "{tmp}/nope.safetensors"], "RadSAM checkpoint not found", None),
    ("checkpoint-missing", P + ["--model", "sam_vit_b", "--checkpoint", "{tmp}/nope.pth"], "--checkpoint {tmp}/nope.pth: file not found", None),
    ("device-unknown", P + ["--device", "tpu"], "unknown device 'tpu'", None),
    ("encoder-backend-unknown", P + ["--encoder-backend", "tensorrt"], "--encoder-backend 'tensorrt' is unknown", None),
    ("decoder-backend-unknown", P + ["--decoder-backend", "fast"], "--decoder-backend 'fast' is unknown", None),
    # --reference / --label
    ("reference-without-label", P + ["--reference", "{in}/seg.nii.gz"], "--reference needs --label N", None),
    ("label-without-reference", P + ["--label", "5"], "--label 5 needs --reference", None),
    ("label-absent", P + ["--reference", "{in}/seg.nii.gz", "--label", "250"],
     "--label 250 is not in --reference {in}/seg.nii.gz (labels present: 5)", None),
    ("label-background", P + ["--reference", "{in}/seg.nii.gz", "--label", "0"], "0 is the background", None),
    ("label-float", P + ["--reference", "{in}/seg.nii.gz", "--label", "5.5"], "argument --label: invalid int value: '5.5'", None),
    ("reference-other-grid", P + ["--reference", "{in}/seg_other_grid.nii.gz", "--label", "5"],
     "reference {in}/seg_other_grid.nii.gz is not on the same voxel grid", None),
    ("reference-missing", P + ["--reference", "{in}/nope.nii.gz", "--label", "5"], "reference not found", None),
    ("reference-truncated", P + ["--reference", "{in}/cut.nii.gz", "--label", "5"], "cannot read reference", None),
    # --mask-prompt
    ("mask-empty", ["--mask-prompt", "{in}/mask_empty.nrrd"], "the mask prompt is empty", None),
    ("mask-empty-on-slice", ["--mask-prompt", "{in}/mask_slice6.nrrd", "--slice", "5"], "mask prompt is empty on prompt slice 5", None),
    ("mask-missing", ["--mask-prompt", "{in}/nope.nrrd"], "mask prompt not found", None),
    ("mask-other-grid", ["--mask-prompt", "{in}/seg_other_grid.nii.gz"], "mask prompt {in}/seg_other_grid.nii.gz is not on the same voxel grid", None),
    ("mask-with-slices", ["--mask-prompt", "{in}/mask_slice6.nrrd", "--prompts", "{json}"],
     "cannot be combined with slice-level prompts", None, J({"slices": {"6": {"box": BOX}}})),
    # argparse
    ("unknown-flag", P + ["--boxx", "1"], "unrecognized arguments: --boxx 1", None),
    ("no-output", ["segment", "{in}/ct.nrrd", "--slice", "5", "--box", "10", "8", "30", "28"],
     "the following arguments are required: -o/--output", None),
    ("no-image", ["segment", "-o", "{out}", "--slice", "5"], "the following arguments are required: image", None),
    ("no-command", ["segmnt"], "argument command: invalid choice: 'segmnt'", None),
    # images
    ("image-missing", ["segment", "{in}/nope.nii.gz", "-o", "{out}"] + P, "image not found: {in}/nope.nii.gz", None),
    ("image-2d", ["segment", "{in}/flat.nrrd", "-o", "{out}"] + P, "is 2D; RadSAM segments 3D volumes", None),
    ("image-png", ["segment", "{in}/slice.png", "-o", "{out}"] + P, "is 2D", None),
    ("image-4d", ["segment", "{in}/four_d.nrrd", "-o", "{out}"] + P, "is 4D", None),
    ("image-rgb", ["segment", "{in}/rgb.nrrd", "-o", "{out}"] + P, "has 3 components per voxel", None),
    ("image-text", ["segment", "{in}/text.nii.gz", "-o", "{out}"] + P, "cannot read image {in}/text.nii.gz", None),
    ("image-noise", ["segment", "{in}/noise.nrrd", "-o", "{out}"] + P, "cannot read image {in}/noise.nrrd", None),
    ("image-empty-file", ["segment", "{in}/empty.nii", "-o", "{out}"] + P, "cannot read image {in}/empty.nii", None),
    ("image-truncated-nii-gz", ["segment", "{in}/cut.nii.gz", "-o", "{out}"] + P, "the file is truncated or corrupt", None),
    ("image-truncated-nii", ["segment", "{in}/cut.nii", "-o", "{out}"] + P, "the file is truncated (", None),
    ("image-truncated-nrrd", ["segment", "{in}/cut.nrrd", "-o", "{out}"] + P, "cannot read image {in}/cut.nrrd", None),
    ("image-truncated-mha", ["segment", "{in}/cut.mha", "-o", "{out}"] + P, "data not read completely", None),
    ("image-zero-spacing", ["segment", "{in}/zero_spacing.nii.gz", "-o", "{out}"] + P,
     "has voxel spacing (0.800000011920929, 0.0, 2.5): spacing must be positive", None),
    ("image-negative-spacing", ["segment", "{in}/neg_spacing.nii.gz", "-o", "{out}"] + P, "spacing must be positive", None),
    ("image-nan-spacing", ["segment", "{in}/nan_spacing.nii.gz", "-o", "{out}"] + P, "spacing must be positive and finite", None),
    ("image-zero-spacing-mha", ["segment", "{in}/zero_spacing.mha", "-o", "{out}"] + P, "spacing must be positive", None),
    ("image-nan-voxels", ["segment", "{in}/nan_voxels.nrrd", "-o", "{out}"] + P, "has 1 NaN or infinite voxels", None),
    ("image-inf-voxels", ["segment", "{in}/inf_voxels.nrrd", "-o", "{out}"] + P, "has 1 NaN or infinite voxels", None),
    ("image-folder-without-dicom", ["segment", "{in}/no_dicom", "-o", "{out}"] + P, "no DICOM series found in folder", None),
    # outputs
    ("out-png", ["segment", "{in}/ct.nrrd", "-o", "{tmp}/m.png"] + P, "unsupported mask format", None),
    ("out-jpg", ["segment", "{in}/ct.nrrd", "-o", "{tmp}/m.jpg"] + P, "unsupported mask format", None),
    ("out-txt", ["segment", "{in}/ct.nrrd", "-o", "{tmp}/m.txt"] + P, "unsupported mask format", None),
    ("out-no-extension", ["segment", "{in}/ct.nrrd", "-o", "{tmp}/mask"] + P, "unsupported mask format", None),
    ("out-bare-extension", ["segment", "{in}/ct.nrrd", "-o", "{tmp}/.nii.gz"] + P, "unsupported mask format", None),
    ("out-mhd", ["segment", "{in}/ct.nrrd", "-o", "{tmp}/m.mhd"] + P, "unsupported mask format", None),
    ("out-nhdr", ["segment", "{in}/ct.nrrd", "-o", "{tmp}/m.nhdr"] + P, "unsupported mask format", None),
    ("out-exists", P, "exists; use --force to overwrite it", "file"),
    ("out-exists-bad-prompt-force", ["--force", "--slice", "5", "--box", "nan", "8", "30", "28"], "not a finite number", "file"),
    ("out-folder", P, "is a folder; give a file name", "dir"),
    ("out-folder-force", P + ["--force"], "is a folder; give a file name", "dir"),
    ("out-dangling-symlink", P, "exists (a symbolic link", "dangling"),
    ("out-symlink", P, "exists (a symbolic link", "link"),
    ("out-missing-folder", ["segment", "{in}/ct.nrrd", "-o", "{tmp}/nope/m.nii.gz"] + P, "output folder {tmp}/nope does not exist", None),
    ("out-folder-is-file", ["segment", "{in}/ct.nrrd", "-o", "{tmp}/f/m.nii.gz"] + P, "output folder {tmp}/f does not exist", "parentfile"),
    ("out-read-only-folder", ["segment", "{in}/ct.nrrd", "-o", "{tmp}/ro/m.nii.gz"] + P, "is not writable", "ro"),
    ("out-unwritable-folder", ["segment", "{in}/ct.nrrd", "-o", "/proc/1/m.nii.gz"] + P, "output folder /proc/1 is not writable", None),
    ("out-is-input", ["segment", "{tmp}/m.nii.gz", "-o", "{tmp}/m.nii.gz", "--force"] + P, "is the input", "img"),
    ("out-late-error-found-first", ["segment", "{in}/ct.nrrd", "-o", "{tmp}/m.txt", "--slice", "5", "--box", "10", "8", "30", "28"],
     "unsupported mask format", None),
    # prompts file: the file
    ("json-missing", ["--prompts", "{tmp}/nope.json"], "prompts file {tmp}/nope.json not found", None),
    ("json-binary", ["--prompts", "{in}/binary.json"], "is not a UTF-8 text file", None),
    ("json-folder", ["--prompts", "{in}/prompts_dir.json"], "is a folder; give a .json file", None),
    ("json-utf16", ["--prompts", "{in}/utf16.json"], "is not a UTF-8 text file", None),
    ("json-deep", ["--prompts", "{in}/deep.json"], "nested too deeply", None),
    ("json-invalid", ["--prompts", "{json}"], "is not valid JSON (line 1", None, J("{nope")),
    ("json-empty-file", ["--prompts", "{json}"], "is not valid JSON", None, J("")),
    ("json-list", ["--prompts", "{json}"], "must be a JSON object", None, J([5, [10, 8, 30, 28]])),
    ("json-string", ["--prompts", "{json}"], "must be a JSON object", None, J('"slice 5"')),
    ("json-nan-literal", ["--prompts", "{json}"], "NaN is not a valid number", None, J('{"slice": 5, "box": [NaN, 8, 30, 28]}')),
    ("json-infinity-literal", ["--prompts", "{json}"], "Infinity is not a valid number", None, J('{"slice": 5, "box": [10, 8, Infinity, 28]}')),
    ("json-duplicate-key", ["--prompts", "{json}"], "key \"slice\" is given twice", None, J('{"slice": 5, "slice": 6, "box": [10, 8, 30, 28]}')),
    ("json-empty-object", ["--prompts", "{json}"], "give the prompt slice", None, J({})),
    # prompts file: top-level fields
    ("json-unknown-point", ["--prompts", "{json}"], "unknown key \"point\" (allowed: slice, box, points", None,
     J({"slice": 5, "box": BOX, "point": [20, 20]})),
    ("json-unknown-boxes", ["--prompts", "{json}"], "unknown key \"boxes\"", None, J({"slice": 5, "boxes": [BOX]})),
    ("json-unknown-axis", ["--prompts", "{json}"], "unknown key \"axis\"", None, J({"slice": 5, "box": BOX, "axis": 1})),
    ("json-slice-float", ["--prompts", "{json}"], "\"slice\" must be an integer, got 4.7", None, J({"slice": 4.7, "box": BOX})),
    ("json-slice-string", ["--prompts", "{json}"], "\"slice\" must be an integer, got \"5\"", None, J({"slice": "5", "box": BOX})),
    ("json-slice-null", ["--prompts", "{json}"], "\"slice\" must be an integer, got null", None, J({"slice": None, "box": BOX})),
    ("json-slice-bool", ["--prompts", "{json}"], "\"slice\" must be an integer, got true", None, J({"slice": True, "box": BOX})),
    ("json-slice-list", ["--prompts", "{json}"], "\"slice\" must be an integer, got [5]", None, J({"slice": [5], "box": BOX})),
    ("json-slice-outside", ["--prompts", "{json}"], "prompt slice 12 is outside the volume", None, J({"slice": 12, "box": BOX})),
    ("json-box-strings", ["--prompts", "{json}"], "\"box\" must be a number, got \"10\"", None, J({"slice": 5, "box": ["10", "8", "30", "28"]})),
    ("json-box-nulls", ["--prompts", "{json}"], "\"box\" must be a number, got null", None, J({"slice": 5, "box": [None, None, None, None]})),
    ("json-box-three", ["--prompts", "{json}"], "\"box\" must be 4 numbers [x0, y0, x1, y1], got [10, 8, 30]", None, J({"slice": 5, "box": [10, 8, 30]})),
    ("json-box-number", ["--prompts", "{json}"], "\"box\" must be 4 numbers", None, J({"slice": 5, "box": 10})),
    ("json-box-string", ["--prompts", "{json}"], "\"box\" must be 4 numbers", None, J({"slice": 5, "box": "10 8 30 28"})),
    ("json-box-nested", ["--prompts", "{json}"], "\"box\" must be a number, got [10, 8]", None, J({"slice": 5, "box": [[10, 8], [30, 28], 1, 2]})),
    ("json-box-overflow", ["--prompts", "{json}"], "\"box\" must be a finite number, got inf", None, J('{"slice": 5, "box": [10, 8, 1e999, 28]}')),
    ("json-box-bool", ["--prompts", "{json}"], "\"box\" must be a number, got true", None, J({"slice": 5, "box": [True, 8, 30, 28]})),
    ("json-box-outside", ["--prompts", "{json}"], "is outside the image", None, J({"slice": 5, "box": [10, 8, 60, 28]})),
    ("json-bounds-one", ["--prompts", "{json}"], "\"bounds\" must be two slice indices", None, J({"slice": 5, "box": BOX, "bounds": [3]})),
    ("json-bounds-strings", ["--prompts", "{json}"], "\"bounds\" must be an integer, got \"3\"", None, J({"slice": 5, "box": BOX, "bounds": ["3", "7"]})),
    ("json-bounds-float", ["--prompts", "{json}"], "\"bounds\" must be an integer, got 3.5", None, J({"slice": 5, "box": BOX, "bounds": [3.5, 7]})),
    ("json-bounds-number", ["--prompts", "{json}"], "\"bounds\" must be two slice indices", None, J({"slice": 5, "box": BOX, "bounds": 7})),
    ("json-bounds-reversed", ["--prompts", "{json}"], "bounds are reversed", None, J({"slice": 5, "box": BOX, "bounds": [7, 3]})),
    ("json-points-flat", ["--prompts", "{json}"], "\"points\"[0] must be [x, y], got 20", None, J({"slice": 5, "points": [20, 20]})),
    ("json-points-not-list", ["--prompts", "{json}"], "\"points\" must be a list of [x, y] pairs", None, J({"slice": 5, "points": "20 20"})),
    ("json-points-one-number", ["--prompts", "{json}"], "\"points\"[0] must be [x, y], got [20]", None, J({"slice": 5, "points": [[20]]})),
    ("json-points-strings", ["--prompts", "{json}"], "\"points\"[0] must be a number, got \"20\"", None, J({"slice": 5, "points": [["20", "20"]]})),
    ("json-points-null", ["--prompts", "{json}"], "\"points\"[0] must be a number, got null", None, J({"slice": 5, "points": [[None, 20]]})),
    ("json-points-outside", ["--prompts", "{json}"], "point (20, 45) is outside the image", None, J({"slice": 5, "points": [[20, 45]]})),
    ("json-labels-without-points", ["--prompts", "{json}"], "\"labels\" given without \"points\"", None, J({"slice": 5, "box": BOX, "labels": [1]})),
    ("json-labels-count", ["--prompts", "{json}"], "2 points but 1 labels", None, J({"slice": 5, "points": [[20, 20], [5, 5]], "labels": [1]})),
    ("json-labels-two", ["--prompts", "{json}"], "\"labels\"[0] must be 1 (positive) or 0 (negative), got 2", None,
     J({"slice": 5, "points": [[20, 20]], "labels": [2]})),
    ("json-labels-bool", ["--prompts", "{json}"], "\"labels\"[0] must be 1 (positive) or 0 (negative), got true", None,
     J({"slice": 5, "points": [[20, 20]], "labels": [True]})),
    ("json-labels-string", ["--prompts", "{json}"], "got \"1\"", None, J({"slice": 5, "points": [[20, 20]], "labels": ["1"]})),
    ("json-labels-not-list", ["--prompts", "{json}"], "\"labels\" must be a list", None, J({"slice": 5, "points": [[20, 20]], "labels": 1})),
    ("json-negative-only", ["--prompts", "{json}"], "has only negative points", None, J({"slice": 5, "points": [[20, 20]], "labels": [0]})),
    # prompts file: edits
    ("json-edits-not-list", ["--prompts", "{json}"], "\"edits\" must be a list", None,
     J({"slice": 5, "box": BOX, "edits": {"slice": 4, "point": [20, 20]}})),
    ("json-edit-not-object", ["--prompts", "{json}"], "edits[0] must be an object", None, J({"slice": 5, "box": BOX, "edits": [[4, 20, 20]]})),
    ("json-edit-no-point", ["--prompts", "{json}"], "edits[0] needs \"point\"", None, J({"slice": 5, "box": BOX, "edits": [{"slice": 4}]})),
    ("json-edit-no-slice", ["--prompts", "{json}"], "edits[0] needs \"slice\"", None, J({"slice": 5, "box": BOX, "edits": [{"point": [20, 20]}]})),
    ("json-edit-unknown-key", ["--prompts", "{json}"], "edits[0]: unknown key \"sign\"", None,
     J({"slice": 5, "box": BOX, "edits": [{"slice": 4, "point": [20, 20], "sign": "-"}]})),
    ("json-edit-positive-string", ["--prompts", "{json}"], "\"positive\" must be true or false, got \"no\"", None,
     J({"slice": 5, "box": BOX, "edits": [{"slice": 4, "point": [20, 20], "positive": "no"}]})),
    ("json-edit-positive-number", ["--prompts", "{json}"], "\"positive\" must be true or false, got 0", None,
     J({"slice": 5, "box": BOX, "edits": [{"slice": 4, "point": [20, 20], "positive": 0}]})),
    ("json-edit-slice-float", ["--prompts", "{json}"], "edits[0]: \"slice\" must be an integer, got 4.5", None,
     J({"slice": 5, "box": BOX, "edits": [{"slice": 4.5, "point": [20, 20]}]})),
    ("json-edit-point-three", ["--prompts", "{json}"], "edits[0]: \"point\" must be [x, y]", None,
     J({"slice": 5, "box": BOX, "edits": [{"slice": 4, "point": [20, 20, 1]}]})),
    ("json-edit-point-strings", ["--prompts", "{json}"], "edits[0]: \"point\" must be a number", None,
     J({"slice": 5, "box": BOX, "edits": [{"slice": 4, "point": ["a", "b"]}]})),
    ("json-edit-outside-bounds", ["--prompts", "{json}"], "edit slice 9 is outside the bounds 3..7", None,
     J({"slice": 5, "box": BOX, "bounds": [3, 7], "edits": [{"slice": 9, "point": [20, 20]}]})),
    ("json-edit-second-bad", ["--prompts", "{json}"], "edits[1]: \"point\" must be a finite number", None,
     J('{"slice": 5, "box": [10, 8, 30, 28], "edits": [{"slice": 4, "point": [20, 20]}, {"slice": 4, "point": [1e999, 2]}]}')),
    # prompts file: slice-level
    ("json-slices-list", ["--prompts", "{json}"], "\"slices\" must be a non-empty object", None, J({"slices": [{"box": BOX}]})),
    ("json-slices-empty", ["--prompts", "{json}"], "\"slices\" must be a non-empty object", None, J({"slices": {}})),
    ("json-slices-value-list", ["--prompts", "{json}"], "slices[\"5\"] must be an object", None, J({"slices": {"5": BOX}})),
    ("json-slices-key-word", ["--prompts", "{json}"], "\"slices\" key \"five\" is not a slice index", None, J({"slices": {"five": {"box": BOX}}})),
    ("json-slices-key-float", ["--prompts", "{json}"], "\"slices\" key \"5.0\" is not a slice index", None, J({"slices": {"5.0": {"box": BOX}}})),
    ("json-slices-key-duplicate", ["--prompts", "{json}"], "slice 5 is given twice", None, J('{"slices": {"5": {"box": [10, 8, 30, 28]}, "05": {"box": [10, 8, 30, 28]}}}')),
    ("json-slices-key-outside", ["--prompts", "{json}"], "prompt slice 10 is outside the volume", None, J({"slices": {"10": {"box": BOX}}})),
    ("json-slices-unknown-key", ["--prompts", "{json}"], "slices[\"5\"]: unknown key \"slice\"", None, J({"slices": {"5": {"box": BOX, "slice": 5}}})),
    ("json-slices-box-strings", ["--prompts", "{json}"], "slices[\"5\"]: \"box\" must be a number", None, J({"slices": {"5": {"box": ["a", 8, 30, 28]}}})),
    ("json-slices-empty-prompt", ["--prompts", "{json}"], "empty prompt on slice 5", None, J({"slices": {"5": {}}})),
    ("json-slices-negative-only", ["--prompts", "{json}"], "has only negative points", None,
     J({"slices": {"5": {"points": [[20, 20]], "labels": [0]}}})),
    ("json-slices-with-box", ["--prompts", "{json}"], "cannot be combined with 'box'", None, J({"slices": {"5": {"box": BOX}}, "box": BOX})),
    ("json-slices-with-bounds", ["--prompts", "{json}"], "cannot be combined with 'bounds'", None, J({"slices": {"5": {"box": BOX}}, "bounds": [3, 7]})),
    ("json-slices-with-flag", ["--prompts", "{json}", "--slice", "5"], "--slice cannot be combined with the slice-level prompts", None,
     J({"slices": {"5": {"box": BOX}}})),
    ("json-slices-edit-outside", ["--prompts", "{json}"], "edit slice 8 is outside the bounds 4..6", None,
     J({"slices": {"4": {"box": BOX}, "6": {"box": BOX}}, "edits": [{"slice": 8, "point": [20, 20]}]})),
    ("json-flags-still-checked", ["--prompts", "{json}", "--box", "10", "8", "30", "60"], "outside the image", None,
     J({"slice": 5, "box": BOX})),
]


def _case_params():
    for c in CASES:
        cid, argv, frag, pre = c[:4]
        extra = c[4] if len(c) > 4 else {}
        marks = []
        if cid == "out-unwritable-folder" and not os.path.isdir("/proc/1"):
            marks.append(pytest.mark.skip(reason="needs Linux /proc (a folder even root cannot write)"))
        if pre == "ro" and os.geteuid() == 0:
            marks.append(pytest.mark.skip(reason="root writes into read-only folders; run as a user to check"))
        yield pytest.param(argv, frag, pre, extra, id=cid, marks=marks)


def _prepare(tmp: Path, inputs: Path, pre, extra):
    out = tmp / "m.nii.gz"
    if pre == "file":
        out.write_bytes(b"keep")
    elif pre == "dir":
        out.mkdir()
    elif pre == "dangling":
        out.symlink_to(tmp / "nowhere.nii.gz")
    elif pre == "link":
        (tmp / "target.nii.gz").write_bytes(b"target")
        out.symlink_to(tmp / "target.nii.gz")
    elif pre == "ro":
        (tmp / "ro").mkdir()
        (tmp / "ro").chmod(0o555)
    elif pre == "parentfile":
        (tmp / "f").write_bytes(b"a file, not a folder")
    elif pre == "img":
        out.write_bytes((inputs / "full.nii.gz").read_bytes())
    if "json" in extra:
        (tmp / "p.json").write_text(extra["json"])
    return {"in": str(inputs), "tmp": str(tmp), "out": str(out), "json": str(tmp / "p.json")}


def _snapshot(tmp: Path) -> dict:
    """Every entry under ``tmp``: its kind and content (or link target)."""
    snap = {}
    for p in sorted(tmp.rglob("*")):
        if p.is_symlink():
            snap[str(p)] = ("link", os.readlink(p))
        elif p.is_dir():
            snap[str(p)] = ("dir",)
        else:
            snap[str(p)] = ("file", p.read_bytes())
    return snap


def run_cli(argv, capsys):
    """``main(argv)`` in-process -> (exit code, stdout, stderr); argparse's exit is caught."""
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    cap = capsys.readouterr()
    return code, cap.out, cap.err


@pytest.fixture
def no_model(monkeypatch):
    """A tripwire: a bad input must be refused before any model loads."""
    import RadSAMLib.models as models

    def tripwire(*a, **k):
        raise AssertionError("load_model called: the bad input was not caught up front")
    monkeypatch.setattr(models, "load_model", tripwire)


@pytest.mark.parametrize("argv, fragment, pre, extra", list(_case_params()))
def test_bad_input_exits_2_with_one_line_and_leaves_files_alone(inputs, tmp_path, capsys, no_model,
                                                                 argv, fragment, pre, extra):
    tmp = tmp_path / "run"
    tmp.mkdir()
    names = _prepare(tmp, inputs, pre, extra)
    if argv[:1] != ["segment"] and argv != ["segmnt"]:
        argv = ["segment", "{in}/ct.nrrd", "-o", "{out}", "-q"] + argv
    argv = [a.format(**names) for a in argv]
    fragment = fragment.format(**names)
    before = _snapshot(tmp)
    try:
        code, out, err = run_cli(argv, capsys)
    finally:
        if pre == "ro":
            (tmp / "ro").chmod(0o755)
    assert code == 2, (code, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("radsam: error: "), err
    assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    assert "Traceback" not in err and out == ""
    # No file written, none clobbered, no temp file left: the folder is exactly as before.
    assert _snapshot(tmp) == before


def test_the_table_is_the_issue_scope():
    """At least the 117 inputs of issue 16 (the table's ids are unique)."""
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 117, len(ids)


# -- valid controls: the same pipeline gives the right mask ------------------------------
CONTROLS = [
    # (id, image, argv, {slice: expected box (x0, y0, x1, y1)} for axis 0, or None)
    ("box-bounds", "{in}/ct.nrrd", PB, {k: BOX for k in range(3, 8)}),
    ("points", "{in}/ct.nrrd", ["--slice", "5", "--point", "20", "18", "--bounds", "5", "5"], "point"),
    ("prompts-json", "{in}/ct.nrrd", ["--prompts", "{json}"], {k: BOX for k in range(4, 7)}),
    ("slices-json", "{in}/ct.nrrd", ["--prompts", "{json2}"], {2: BOX, 6: [5, 5, 20, 15]}),
    ("mask-prompt", "{in}/ct.nrrd", ["--mask-prompt", "{in}/mask_slice6.nrrd", "--bounds", "6", "6"], {6: BOX}),
    ("nii-gz-input-nrrd-output", "{in}/full.nii.gz", PB + ["-o", "{tmp}/m.nrrd"], {k: BOX for k in range(3, 8)}),
    ("mha-output", "{in}/full.mha", PB + ["-o", "{tmp}/m.mha"], {k: BOX for k in range(3, 8)}),
    ("nii-output", "{in}/full.nii", PB + ["-o", "{tmp}/m.nii"], {k: BOX for k in range(3, 8)}),
    ("one-slice-image", "{in}/one_slice.nrrd", ["--slice", "0", "--box", "10", "8", "30", "28"], {0: BOX}),
    ("huge-spacing", "{in}/huge_spacing.nii.gz", PB, {k: BOX for k in range(3, 8)}),
    ("float-image", "{in}/float.nrrd", PB, {k: BOX for k in range(3, 8)}),
    ("force-over-file", "{in}/ct.nrrd", PB + ["--force"], {k: BOX for k in range(3, 8)}),
    ("reference-dice", "{in}/ct.nrrd", PB + ["--reference", "{in}/seg.nii.gz", "--label", "5"], {k: BOX for k in range(3, 8)}),
    ("edit-positive", "{in}/ct.nrrd", PB + ["--edit", "5", "40", "18", "+"], "edit"),
]


@pytest.fixture(scope="module")
def control_inputs(inputs):
    ct = _ct()
    one = _ct(size=(1, 40, 50))
    sitk.WriteImage(one, str(inputs / "one_slice.nrrd"))
    sitk.WriteImage(_ct(spacing=(1e4, 1e4, 1e5)), str(inputs / "huge_spacing.nii.gz"))
    f = sitk.Cast(ct, sitk.sitkFloat32)
    sitk.WriteImage(f, str(inputs / "float.nrrd"))
    return inputs


@pytest.mark.parametrize("cid, image, argv, expect", CONTROLS, ids=[c[0] for c in CONTROLS])
def test_valid_input_gives_the_right_mask(control_inputs, tmp_path, capsys, monkeypatch, cid, image, argv, expect):
    """The stand-in model segments exactly its prompt (propagated as a mask), so the
    right mask is the box on every slice in the bounds and nothing elsewhere."""
    import RadSAMLib.models as models
    from fakes import FakeModel
    monkeypatch.setattr(models, "load_model", lambda *a, **k: FakeModel(strategy="mask"))
    inputs = control_inputs
    out = tmp_path / "m.nii.gz"
    if cid == "force-over-file":
        out.write_bytes(b"old")
    (tmp_path / "p.json").write_text(json.dumps({"slice": 5, "box": BOX, "bounds": [4, 6]}))
    (tmp_path / "p2.json").write_text(json.dumps({"slices": {"2": {"box": BOX}, "6": {"box": [5, 5, 20, 15]}}}))
    names = {"in": str(inputs), "tmp": str(tmp_path), "out": str(out),
             "json": str(tmp_path / "p.json"), "json2": str(tmp_path / "p2.json")}
    argv = [a.format(**names) for a in ["segment", image, "-o", "{out}", "-q"] + argv]
    out = Path(argv[argv.index("-o", 5) + 1]) if "-o" in argv[5:] else out
    old = os.umask(0o022)
    try:
        code, text, err = run_cli(argv, capsys)
    finally:
        os.umask(old)
    assert code == 0, err
    assert "Traceback" not in err and err == ""
    assert f"wrote {out}" in text
    assert (os.stat(out).st_mode & 0o777) == 0o644          # the user's umask, not mkstemp's 0600
    src = sitk.ReadImage(image.format(**names))
    back = sitk.ReadImage(str(out))
    assert back.GetSize() == src.GetSize()
    np.testing.assert_allclose(back.GetSpacing(), src.GetSpacing(), rtol=1e-5)
    m = sitk.GetArrayFromImage(back).astype(bool)
    if expect == "point":      # a disc around the click on slice 5 only
        assert m[5, 18, 20] and m[5].sum() >= 3 and not m[:5].any() and not m[6:].any()
        return
    if expect == "edit":       # the click at (40, 18) adds what the box missed; nothing leaves the bounds
        assert m[5, 18, 40] and m[3:8, 8:29, 10:31].all() and not m[:3].any() and not m[8:].any()
        return
    want = np.zeros_like(m)
    for k, (x0, y0, x1, y1) in expect.items():
        want[k, y0:y1 + 1, x0:x1 + 1] = True
    assert dice(m, want) > 0.97 and not (m & ~want).any(axis=(1, 2))[[k for k in range(m.shape[0]) if k not in expect]].any()
    if cid == "reference-dice":
        assert "3D Dice vs" in text


def test_dicom_folder_still_reads(tmp_path, capsys, monkeypatch):
    """A DICOM series folder (real data) passes every check and gets a mask on its grid."""
    need(DICOM)
    import RadSAMLib.models as models
    from fakes import FakeModel
    monkeypatch.setattr(models, "load_model", lambda *a, **k: FakeModel(strategy="mask"))
    out = tmp_path / "m.nrrd"
    code, text, err = run_cli(["segment", str(DICOM / "ct"), "-o", str(out), "-q", "--slice", "1",
                               "--box", "200", "200", "300", "300"], capsys)
    assert code == 0, err
    m = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    assert m.shape == (3, 512, 512) and m[1, 250, 250] and not m[1, 100, 100]


def test_write_mask_follows_the_umask(tmp_path):
    from RadSAMLib.imageio import read_image, write_mask
    sitk.WriteImage(_ct(), str(tmp_path / "ct.nrrd"))
    src = read_image(tmp_path / "ct.nrrd")
    for umask, mode in ((0o022, 0o644), (0o077, 0o600), (0o002, 0o664)):
        old = os.umask(umask)
        try:
            p = write_mask(np.zeros(SHAPE, np.uint8), src, tmp_path / f"m{umask:o}.nii.gz")
        finally:
            os.umask(old)
        assert os.stat(p).st_mode & 0o777 == mode
    # nothing but the image and the three masks: no temporary file left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nrrd", "m2.nii.gz", "m22.nii.gz", "m77.nii.gz"]


def test_session_shares_the_request_checks():
    """The API refuses what the command line refuses, with the same words (one check)."""
    from fakes import FakeModel
    from RadSAMLib.errors import RadSAMError
    from RadSAMLib.prompts import SlicePrompt
    from RadSAMLib.config import RadSAMConfig
    from RadSAMLib.session import Session
    s = Session.from_volume(FakeModel(), np.zeros(SHAPE, np.int16) + 40, config=RadSAMConfig(strategy="mask"))
    for call, words in [
        (lambda: s.segment(5, SlicePrompt(box=(float("nan"), 8, 30, 28))), "must be 4 finite numbers"),
        (lambda: s.segment(5, SlicePrompt(points=[(20, 20)], labels=[0])), "only negative points"),
        (lambda: s.segment(4.7, SlicePrompt(box=BOX)), "prompt slice must be an integer, got 4.7"),
        (lambda: s.segment("5", SlicePrompt(box=BOX)), "must be an integer"),
        (lambda: s.segment(5, SlicePrompt(box=BOX), bounds=(3, "x")), "bounds must be an integer"),
        (lambda: s.segment_slices({5: SlicePrompt(points=[(20, 20)], labels=[0])}), "only negative points"),
        (lambda: s.edit(5, (float("inf"), 3)), "must be a finite number"),
        (lambda: s.edit(5, (20, 20, 1)), "must be [x, y]"),
    ]:
        with pytest.raises(RadSAMError, match=re.escape(words)):
            call()
    assert not s.mask.any() and not s.can_undo


# -- the real model: slow controls and interrupts ------------------------------------------
@pytest.mark.slow
def test_readme_command_gives_the_liver(tmp_path, capsys):
    """The README's main command (default model, real CT) still writes a good liver mask."""
    need(ABDOMEN)
    out = tmp_path / "liver.nii.gz"
    code, text, err = run_cli(["segment", str(ABDOMEN / "ct.nii.gz"), "-o", str(out), "--force", "-q",
                               "--slice", "24", "--box", "44", "27", "104", "81", "--bounds", "0", "29",
                               "--reference", str(ABDOMEN / "seg.nii.gz"), "--label", "5", "--device", "cpu"], capsys)
    assert code == 0, err
    d = float(re.search(r"3D Dice .*: ([0-9.]+)", text).group(1))
    assert d > 0.9


def _run_and_signal(tmp_path, sig):
    need(ABDOMEN)
    out = tmp_path / "liver.nii.gz"
    cmd = [sys.executable, "-m", "RadSAMLib.cli", "segment", str(ABDOMEN / "ct.nii.gz"), "-o", str(out),
           "--slice", "24", "--box", "44", "27", "104", "81", "--model", "litemedsam", "--device", "cpu",
           "--encoder-backend", "torch"]
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    err = []

    def pump():
        while chunk := p.stderr.read1(4096):
            err.append(chunk.decode(errors="replace"))
    t = threading.Thread(target=pump, daemon=True)
    t.start()
    deadline = time.time() + 300
    while "slice" not in "".join(err) and p.poll() is None and time.time() < deadline:
        time.sleep(0.1)                  # the progress bar is up: the run is mid-propagation
    assert p.poll() is None, "".join(err)
    p.send_signal(sig)
    rc = p.wait(timeout=120)
    t.join(timeout=10)
    return rc, "".join(err), out


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_interrupt_mid_run_writes_nothing_and_says_so(tmp_path, sig, code):
    rc, err, out = _run_and_signal(tmp_path, sig)
    assert rc == code, err
    last = err.replace("\r", "\n").strip().splitlines()[-1]
    assert last == f"radsam: interrupted ({signal.Signals(sig).name}); no output written", err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []       # no mask, no temp file


@pytest.mark.slow
def test_readme_python_snippet_does_what_it_says(tmp_path, monkeypatch):
    """The README's Python example, run as written on the example CT: its correction click
    changes the mask (an example edit that changes nothing would teach the wrong thing)."""
    need(ABDOMEN)
    text = (ROOT / "README.md").read_text()
    code = re.search(r"## Python\n\n```python\n(.*?)```", text, re.S).group(1)
    code = code.replace('"ct.nii.gz"', repr(str(ABDOMEN / "ct.nii.gz")))
    code = code.replace('device="auto"', 'device="cpu"')
    monkeypatch.chdir(tmp_path)
    lines = code.splitlines()
    at = next(i for i, ln in enumerate(lines) if "session.edit(" in ln)
    ns: dict = {}
    exec("\n".join(lines[:at]), ns)                      # noqa: S102 - the README's own code
    before = ns["session"].mask.copy()
    exec("\n".join(lines[at:]), ns)                      # noqa: S102
    change = ns["change"]
    assert change.slices, "the README's edit changed no slice"
    ns["session"].undo()
    ns["session"].redo()
    assert (ns["session"].mask != before).sum() > 100
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "liver.nii.gz")))
    np.testing.assert_array_equal(written, ns["session"].mask)


def test_info_names_the_bundled_fine_tune_hash(capsys):
    """``radsam info`` checks what it loads: for the default model the bundled delta's
    SHA-256 (the one the code pins), not only the base model's."""
    from RadSAMLib.models import registry
    assert main(["info", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("weights check"))
    assert f"fine-tune sha256 {registry.BUNDLED_RADSAM_SHA256}" in line and "base litemedsam sha256" in line


@pytest.fixture
def fake_model(monkeypatch):
    import RadSAMLib.models as models
    from fakes import FakeModel
    monkeypatch.setattr(models, "load_model", lambda *a, **k: FakeModel(strategy="mask"))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_mid_propagation_writes_nothing(inputs, tmp_path, capsys, monkeypatch, fake_model, sig):
    """In-process twin of the slow subprocess test: the signal lands after the second slice."""
    from RadSAMLib import cli

    def update(self, done, total):
        if done == 2:
            os.kill(os.getpid(), sig)
    monkeypatch.setattr(cli._ProgressBar, "update", update)
    out = tmp_path / "m.nii.gz"
    handlers = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    code, text, err = run_cli(["segment", str(inputs / "ct.nrrd"), "-o", str(out), "-q"] + PB, capsys)
    assert code == 128 + sig and text == ""
    assert err.strip() == f"radsam: interrupted ({signal.Signals(sig).name}); no output written"
    assert list(tmp_path.iterdir()) == []
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers  # restored


def test_signal_during_the_write_waits_for_a_complete_file(inputs, tmp_path, capsys, monkeypatch, fake_model):
    """A signal while the finished mask is written: the file is completed, and said so."""
    import RadSAMLib.imageio as imageio
    real = imageio.write_mask

    def write_mask(*a, **k):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*a, **k)
    monkeypatch.setattr(imageio, "write_mask", write_mask)
    out = tmp_path / "m.nii.gz"
    code, text, err = run_cli(["segment", str(inputs / "ct.nrrd"), "-o", str(out), "-q"] + PB, capsys)
    assert code == 143
    assert err.strip() == f"radsam: interrupted (SIGTERM); {out} was written"
    m = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    assert m[3:8, 8:29, 10:31].all() and not m[:3].any()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.nii.gz"]
