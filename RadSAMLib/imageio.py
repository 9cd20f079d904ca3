"""Reading CT volumes and writing masks with the source geometry.

Arrays are ``(k, j, i)`` (SimpleITK's ``GetArrayFromImage`` order). Masks are written
on the exact grid of the reference image (origin, spacing, direction), atomically: to a
temporary file in the target folder, then renamed, so an error never leaves a partial
file and an existing file is only replaced when asked.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import ImageError, RadSAMError
from .files import atomic_write


def read_image(path) -> sitk.Image:
    """Read a 3D scalar image: NIfTI, NRRD, MHA/MHD, or a folder holding one DICOM series."""
    path = Path(path)
    if not path.exists():
        raise ImageError(f"image not found: {path}")
    try:
        if path.is_dir():
            reader = sitk.ImageSeriesReader()
            series = reader.GetGDCMSeriesIDs(str(path))
            if not series:
                raise ImageError(f"no DICOM series found in folder {path}")
            if len(series) > 1:
                raise ImageError(f"folder {path} holds {len(series)} DICOM series; give a folder with one series")
            reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path), series[0]))
            image = reader.Execute()
        else:
            image = sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise ImageError(f"cannot read image {path}: not a readable NIfTI/NRRD/MHA/DICOM file") from e
    check_volume(image, str(path))
    return image


def check_volume(image: sitk.Image, name: str = "image") -> None:
    dim = image.GetDimension()
    if dim != 3:
        raise ImageError(f"{name} is {dim}D; RadSAM segments 3D volumes (one 3D scalar image)")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ImageError(f"{name} has {image.GetNumberOfComponentsPerPixel()} components per voxel; need a scalar CT volume")


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


def read_label(path, reference: sitk.Image | None = None) -> np.ndarray:
    """Read a label volume as a ``(k, j, i)`` integer array, checked against ``reference``'s grid."""
    image = read_image(path)
    if reference is not None:
        same = (image.GetSize() == reference.GetSize()
                and np.allclose(image.GetSpacing(), reference.GetSpacing(), atol=1e-4)
                and np.allclose(image.GetOrigin(), reference.GetOrigin(), atol=1e-3)
                and np.allclose(image.GetDirection(), reference.GetDirection(), atol=1e-5))
        if not same:
            raise ImageError(f"label volume {path} is not on the same voxel grid as the image")
    return sitk.GetArrayFromImage(image)


def mask_to_image(mask_kji: np.ndarray, reference: sitk.Image) -> sitk.Image:
    if tuple(mask_kji.shape) != tuple(reversed(reference.GetSize())):
        raise RadSAMError(f"mask shape {mask_kji.shape} does not match the image grid {tuple(reversed(reference.GetSize()))}")
    out = sitk.GetImageFromArray(np.ascontiguousarray(mask_kji, dtype=np.uint8))
    out.CopyInformation(reference)
    return out


def write_mask(mask_kji: np.ndarray, reference: sitk.Image, path, force: bool = False) -> Path:
    """Write a binary/label mask on ``reference``'s grid, atomically."""
    path = Path(path)
    if path.exists() and not force:
        raise RadSAMError(f"output {path} exists; use --force to overwrite it")
    if not path.parent.is_dir():
        raise RadSAMError(f"output folder {path.parent} does not exist")
    image = mask_to_image(mask_kji, reference)
    # Keep the real extension(s) on the temp name: SimpleITK picks the writer from it.
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    if not suffix:
        raise RadSAMError(f"output {path} needs an extension (.nii.gz, .nrrd, .mha)")
    try:
        return atomic_write(path, lambda tmp: sitk.WriteImage(image, tmp, useCompression=True), suffix=suffix)
    except RuntimeError as e:
        raise RadSAMError(f"cannot write {path}: unsupported format or unwritable location") from e
