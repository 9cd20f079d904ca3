"""Reading CT volumes and writing masks with the source geometry.

Arrays are ``(k, j, i)`` (SimpleITK's ``GetArrayFromImage`` order). Masks are written
on the exact grid of the reference image (origin, spacing, direction), atomically: to a
temporary file in the target folder, then renamed, so an error never leaves a partial
file and an existing file is only replaced when asked.
"""
from __future__ import annotations

import contextlib
import gzip
import os
import re
import struct
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import ImageError, RadSAMError
from .files import atomic_write

# Mask formats written atomically as ONE 3D file (a .mhd/.nhdr header names its data file,
# which a temp-then-rename write would leave pointing at the temp name; .png/.jpg are 2D).
OUTPUT_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")


def read_image(path, what: str = "image") -> sitk.Image:
    """Read a 3D scalar image: NIfTI, NRRD, MHA/MHD, or a folder holding one DICOM series.

    Refused, with a message naming ``what`` and the problem: a truncated or corrupt file
    (SimpleITK reads a cut NIfTI as zeros), zero, negative or non-finite spacing (ITK
    silently replaces it by 1.0), NaN/Inf voxels, anything not 3D scalar.
    """
    path = Path(path)
    if not path.exists():
        raise ImageError(f"{what} not found: {path}")
    if not os.access(path, os.R_OK):
        raise ImageError(f"{what} {path} is not readable (permission denied)")
    try:
        with _quiet_itk() as itk_said:
            if path.is_dir():
                reader = sitk.ImageSeriesReader()
                series = reader.GetGDCMSeriesIDs(str(path))
                if not series:
                    raise ImageError(f"no DICOM series found in folder {path} ({what})")
                if len(series) > 1:
                    raise ImageError(f"folder {path} holds {len(series)} DICOM series; give a folder with one series")
                reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path), series[0]))
                image = reader.Execute()
            else:
                _check_header(path, what)
                image = sitk.ReadImage(str(path))
    except RuntimeError as e:
        said = [ln.strip() for ln in itk_said if ln.strip()]
        raise ImageError(f"cannot read {what} {path}: not a readable NIfTI/NRRD/MHA/DICOM file "
                         f"({said[0][:160] if said else _itk_reason(e)})") from e
    check_volume(image, f"{what} {path}")
    return image


@contextlib.contextmanager
def _quiet_itk():
    """Silence ITK while reading (its warnings and MetaImage's messages go straight to the
    process's stderr, around Python); yields the lines it printed, for our own message."""
    said: list = []
    warnings = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    fd = 2  # ITK's std::cerr is the process's stderr, whatever Python's sys.stderr is
    try:
        os.fstat(fd)
    except OSError:
        fd = None  # no stderr at all (a GUI process): nothing to redirect
    if fd is None:
        try:
            yield said
        finally:
            sitk.ProcessObject.SetGlobalWarningDisplay(warnings)
        return
    if sys.stderr is not None:
        sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), fd)
        try:
            yield said
        finally:
            os.dup2(saved, fd)
            os.close(saved)
            sitk.ProcessObject.SetGlobalWarningDisplay(warnings)
            sink.seek(0)
            said.extend(sink.read(1 << 16).decode("utf-8", "replace").splitlines())


def _itk_reason(e: Exception) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    reason = lines[-1] if lines else type(e).__name__
    return reason.split("): ", 1)[-1][:160]


def _check_header(path: Path, what: str) -> None:
    """What ITK does not refuse itself: a NIfTI shorter than its header says, a broken gzip
    stream, and zero/negative/non-finite spacing in NIfTI and MetaImage headers."""
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        _check_nifti(path, what, name.endswith(".gz"))
    elif name.endswith((".mha", ".mhd")):
        head = path.open("rb").read(4096).split(b"ElementDataFile", 1)[0].decode("latin-1")
        m = re.search(r"^\s*Element(?:Spacing|Size)\s*=\s*(.*)$", head, re.M)
        if m:
            try:
                spacing = [float(v) for v in m.group(1).split()]
            except ValueError:
                raise ImageError(f"{what} {path} has an unreadable spacing '{m.group(1).strip()}'") from None
            _check_spacing(spacing, path, what)


def _check_nifti(path: Path, what: str, compressed: bool) -> None:
    opener = gzip.open if compressed else open
    try:
        with opener(path, "rb") as f:
            hdr = f.read(540)
            total = len(hdr)
            if compressed:  # read the whole stream: a cut file ends early or fails its CRC
                while chunk := f.read(1 << 22):
                    total += len(chunk)
            else:
                total = path.stat().st_size
    except (EOFError, OSError, zlib.error) as e:
        raise ImageError(f"cannot read {what} {path}: the file is truncated or corrupt ({e})") from None
    if len(hdr) < 348:
        raise ImageError(f"cannot read {what} {path}: the file is truncated (shorter than a NIfTI header)")
    for endian in "<>":
        size = struct.unpack(endian + "i", hdr[:4])[0]
        if size in (348, 540):
            break
    else:
        return  # not NIfTI: ITK says what it is
    if size == 348:
        dims = struct.unpack(endian + "8h", hdr[40:56])
        bitpix = struct.unpack(endian + "h", hdr[72:74])[0]
        pixdim = struct.unpack(endian + "8f", hdr[76:108])
        offset = struct.unpack(endian + "f", hdr[108:112])[0]
    else:
        dims = struct.unpack(endian + "8q", hdr[16:80])
        bitpix = struct.unpack(endian + "h", hdr[14:16])[0]
        pixdim = struct.unpack(endian + "8d", hdr[104:168])
        offset = struct.unpack(endian + "q", hdr[168:176])[0]
    ndim = dims[0]
    if not 1 <= ndim <= 7 or any(d < 1 for d in dims[1:ndim + 1]):
        return  # ITK names a malformed header
    need = int(offset) + int(np.prod(dims[1:ndim + 1], dtype=np.int64)) * bitpix // 8
    if total < need:
        raise ImageError(f"cannot read {what} {path}: the file is truncated ({total} bytes where its header needs {need})")
    spatial = [(pixdim[a + 1], dims[a + 1]) for a in range(min(ndim, 3))]
    _check_spacing([p for p, n in spatial if n > 1], path, what)


def _check_spacing(spacing, path, what: str) -> None:
    """Spacing must be finite and positive along every axis with more than one voxel (a
    one-slice axis has no spacing to speak of)."""
    bad = [v for v in spacing if not (np.isfinite(v) and v > 0)]
    if bad:
        raise ImageError(f"{what} {path} has voxel spacing {tuple(float(v) for v in spacing)}: "
                         "spacing must be positive and finite (fix the header)")


def check_volume(image: sitk.Image, name: str = "image") -> None:
    dim = image.GetDimension()
    if dim != 3:
        raise ImageError(f"{name} is {dim}D; RadSAM segments 3D volumes (one 3D scalar image)")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ImageError(f"{name} has {image.GetNumberOfComponentsPerPixel()} components per voxel; need a scalar CT volume")
    spacing = image.GetSpacing()
    if not all(np.isfinite(v) and v > 0 for v in spacing):
        raise ImageError(f"{name} has voxel spacing {spacing}: spacing must be positive and finite")
    if image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        view = sitk.GetArrayViewFromImage(image)
        finite = np.isfinite(view)
        if not finite.all():
            bad = int(finite.size - np.count_nonzero(finite))
            raise ImageError(f"{name} has {bad} NaN or infinite voxels; RadSAM needs finite values "
                             "(replace them, e.g. with the air value -1000)")


def image_to_array(image: sitk.Image) -> np.ndarray:
    """``(k, j, i)`` copy of the voxel values (HU for CT).

    8- and 16-bit integers stay as they are (a CT's int16 HU takes half the memory of
    float32: 150 MB for 300 slices of 512x512); anything else becomes float32. The model's
    window converts one slice at a time.
    """
    arr = sitk.GetArrayFromImage(image)
    if arr.dtype in (np.int8, np.uint8, np.int16, np.uint16):
        return arr
    return arr.astype(np.float32, copy=False)


def read_label(path, reference: sitk.Image | None = None, what: str = "label volume") -> np.ndarray:
    """Read a label volume as a ``(k, j, i)`` array, checked against ``reference``'s grid."""
    image = read_image(path, what)
    if reference is not None:
        same = (image.GetSize() == reference.GetSize()
                and np.allclose(image.GetSpacing(), reference.GetSpacing(), atol=1e-4)
                and np.allclose(image.GetOrigin(), reference.GetOrigin(), atol=1e-3)
                and np.allclose(image.GetDirection(), reference.GetDirection(), atol=1e-5))
        if not same:
            raise ImageError(f"{what} {path} is not on the same voxel grid as the image "
                             f"(size {image.GetSize()} vs {reference.GetSize()}, "
                             f"spacing {_short(image.GetSpacing())} vs {_short(reference.GetSpacing())})")
    return sitk.GetArrayFromImage(image)


def _short(values) -> tuple:
    return tuple(round(float(v), 4) for v in values)


def mask_to_image(mask_kji: np.ndarray, reference: sitk.Image) -> sitk.Image:
    if tuple(mask_kji.shape) != tuple(reversed(reference.GetSize())):
        raise RadSAMError(f"mask shape {mask_kji.shape} does not match the image grid {tuple(reversed(reference.GetSize()))}")
    out = sitk.GetImageFromArray(np.ascontiguousarray(mask_kji, dtype=np.uint8))
    out.CopyInformation(reference)
    return out


def check_output(path, force: bool = False, inputs=()) -> Path:
    """Check a mask output path before any work: a 3D format, a writable existing folder,
    not a folder itself, not one of ``inputs``, and not an existing file (or symlink, even
    a dangling one) unless ``force``. Returns the path."""
    path = Path(path)
    if path.is_dir():
        raise RadSAMError(f"output {path} is a folder; give a file name")
    name = path.name.lower()
    if not name.endswith(OUTPUT_SUFFIXES) or name in OUTPUT_SUFFIXES:
        raise RadSAMError(f"output {path}: unsupported mask format; name it .nii.gz, .nii, .nrrd or .mha "
                          "(a 3D file)")
    parent = path.parent
    if not parent.is_dir():
        raise RadSAMError(f"output folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise RadSAMError(f"output folder {parent} is not writable (permission denied)")
    if os.path.lexists(path):
        for src in inputs:
            if src and not path.is_symlink() and os.path.exists(src) and os.path.samefile(path, src):
                raise RadSAMError(f"output {path} is the input {src}; choose another file")
        if not force:
            link = " (a symbolic link; --force replaces the link, not its target)" if path.is_symlink() else ""
            raise RadSAMError(f"output {path} exists{link}; use --force to overwrite it")
    return path


def write_mask(mask_kji: np.ndarray, reference: sitk.Image, path, force: bool = False) -> Path:
    """Write a binary/label mask on ``reference``'s grid, atomically, with the user's umask.

    The mask goes to a temporary file in the target folder, renamed over ``path`` only once
    complete: an error or an interrupt never leaves a partial file. An existing ``path``
    (a symlink: the link itself) is only replaced with ``force``.
    """
    path = check_output(path, force)
    image = mask_to_image(mask_kji, reference)
    # Keep the real extension(s) on the temp name: SimpleITK picks the writer from it.
    suffix = next(s for s in OUTPUT_SUFFIXES if path.name.lower().endswith(s))
    try:
        return atomic_write(path, lambda tmp: sitk.WriteImage(image, tmp, useCompression=True), suffix=suffix)
    except RuntimeError as e:
        raise RadSAMError(f"cannot write {path}: {_itk_reason(e)}") from e
    except OSError as e:
        raise RadSAMError(f"cannot write {path}: {e.strerror or e}") from e
