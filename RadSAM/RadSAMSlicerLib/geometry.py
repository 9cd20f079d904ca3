"""Volume voxels and RAS positions: the mapping between MRML geometry and RadSAMLib arrays.

MRML indexes voxels ``(i, j, k)``; RadSAMLib arrays are ``(k, j, i)`` (numpy axis 0 = k).
Voxel centres have integer IJK coordinates. A RAS position in the world frame maps to
IJK through the volume's parent transform (world -> volume node frame; linear only) and
the inverse of its IJK-to-RAS matrix (origin, spacing and direction together).

Everything here takes MRML nodes and returns numpy; nothing imports Qt or ``slicer.util``.
"""
from __future__ import annotations

import numpy as np
import vtk
from vtk.util import numpy_support

from RadSAMLib.slices import slice_index   # torch-free; the one definition

from .errors import user_error


def matrix_to_numpy(m: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=np.float64)


def numpy_to_matrix(a: np.ndarray) -> vtk.vtkMatrix4x4:
    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(a[r, c]))
    return m


# A CT in Hounsfield units has air (about -1000 HU) somewhere; MR, PET or a CT stored
# without its rescale have nothing this low.
AIR_HU = -500.0


def check_volume(volume_node) -> None:
    """Raise a user-facing error unless ``volume_node`` is a scalar image volume with voxels."""
    if volume_node is None:
        raise user_error("no volume selected: choose the CT volume to segment")
    name = volume_node.GetName()
    if volume_node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise user_error(f"volume '{name}' is a labelmap (a segmentation stored as a volume), not an image: "
                         "choose the CT volume to segment")
    image = volume_node.GetImageData()
    if image is None or 0 in image.GetDimensions():
        raise user_error(f"volume '{name}' has no voxels")
    n = image.GetNumberOfScalarComponents()
    if n != 1:
        kind = "a colour (RGB) volume" if n in (3, 4) else "a multi-frame (4D) volume"
        raise user_error(f"volume '{name}' has {n} values per voxel ({kind}); RadSAM needs a scalar CT "
                         "volume (for a 4D series, one frame: a sequence's proxy volume)")
    if min(image.GetDimensions()) < 2:
        raise user_error(f"volume '{volume_node.GetName()}' is not 3D (dimensions {image.GetDimensions()})")


def looks_like_hu(volume_node) -> bool:
    """True when the voxels look like CT Hounsfield units (some below :data:`AIR_HU`).
    VTK caches the scalar range, so this is cheap after the first call."""
    return float(volume_node.GetImageData().GetScalarRange()[0]) < AIR_HU


def volume_array(volume_node) -> np.ndarray:
    """Voxel values of ``volume_node`` as a ``(k, j, i)`` array: a copy, since the worker
    thread reads it while the node may change. 8/16-bit integers (a CT's int16 HU) keep
    their type, half the memory of float32; anything else becomes float32."""
    check_volume(volume_node)
    image = volume_node.GetImageData()
    ni, nj, nk = image.GetDimensions()
    flat = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(nk, nj, ni)
    if flat.dtype in (np.int8, np.uint8, np.int16, np.uint16):
        return flat.copy()
    return flat.astype(np.float32, copy=True)


def volume_slice(volume_node, axis: int, idx: int) -> np.ndarray:
    """One slice across ``axis`` (numpy axis of the ``(k, j, i)`` array), as a copy."""
    check_volume(volume_node)
    image = volume_node.GetImageData()
    ni, nj, nk = image.GetDimensions()
    flat = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(nk, nj, ni)
    return np.array(flat[slice_index(axis, int(idx))], dtype=np.float32)


def volume_shape(volume_node) -> tuple:
    """``(k, j, i)`` voxel counts."""
    ni, nj, nk = volume_node.GetImageData().GetDimensions()
    return (nk, nj, ni)


def parent_to_world(node) -> np.ndarray:
    """4x4 matrix from ``node``'s own frame to world RAS (identity without a parent
    transform); a user error for a non-linear (warping) transform."""
    parent = node.GetParentTransformNode()
    if parent is None:
        return np.eye(4)
    if not parent.IsTransformToWorldLinear():
        raise user_error(f"'{node.GetName()}' is under a non-linear transform ('{parent.GetName()}'); "
                         "harden it first (RadSAM works on the voxel grid)")
    m = vtk.vtkMatrix4x4()
    parent.GetMatrixTransformToWorld(m)
    return matrix_to_numpy(m)


def ijk_to_world(volume_node) -> np.ndarray:
    """4x4 matrix: homogeneous ``(i, j, k, 1)`` -> world RAS, parent transform included."""
    m = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(m)
    return parent_to_world(volume_node) @ matrix_to_numpy(m)


def ijk_to_node_frame(volume_node, other_node) -> np.ndarray:
    """4x4 matrix: volume IJK -> the local (pre-parent-transform) frame of ``other_node``
    (e.g. a segmentation node, whose labelmaps are stored in its local frame)."""
    return np.linalg.inv(parent_to_world(other_node)) @ ijk_to_world(volume_node)


def world_to_kji(volume_node, ras) -> np.ndarray:
    """Continuous ``(k, j, i)`` voxel coordinates of world RAS points ``(..., 3)``."""
    ras = np.asarray(ras, dtype=np.float64)
    h = np.concatenate([ras.reshape(-1, 3), np.ones((ras.reshape(-1, 3).shape[0], 1))], axis=1)
    ijk = (np.linalg.inv(ijk_to_world(volume_node)) @ h.T).T[:, :3]
    return ijk[:, ::-1].reshape(ras.shape)


def kji_to_world(volume_node, kji) -> np.ndarray:
    """World RAS of continuous ``(k, j, i)`` voxel coordinates ``(..., 3)``."""
    kji = np.asarray(kji, dtype=np.float64)
    flat = kji.reshape(-1, 3)[:, ::-1]
    h = np.concatenate([flat, np.ones((flat.shape[0], 1))], axis=1)
    return (ijk_to_world(volume_node) @ h.T).T[:, :3].reshape(kji.shape)


def slice_axis(volume_node, view_normal_ras=None) -> int:
    """Numpy axis (0 = k, 1 = j, 2 = i) to propagate across.

    Without a view, the volume's own slice axis (k, numpy axis 0). With a slice view's
    normal (world RAS direction), the IJK axis whose world direction is closest to it,
    so propagation runs across the slices the user is looking at.
    """
    if view_normal_ras is None:
        return 0
    n = np.asarray(view_normal_ras, dtype=np.float64)
    n = n / np.linalg.norm(n)
    cols = ijk_to_world(volume_node)[:3, :3]
    cols = cols / np.linalg.norm(cols, axis=0, keepdims=True)
    ijk_axis = int(np.argmax(np.abs(n @ cols)))
    return 2 - ijk_axis


def split_kji(kji, axis: int):
    """``(slice index, x, y)`` of continuous ``(k, j, i)`` coordinates for slices across
    ``axis``: rows are the first remaining numpy axis, columns the second, and
    ``(x, y) = (column, row)``."""
    kji = np.asarray(kji, dtype=np.float64)
    rest = [a for a in range(3) if a != axis]
    return kji[..., axis], kji[..., rest[1]], kji[..., rest[0]]


def slice_index_at(volume_node, ras, axis: int) -> int:
    """Index of the slice across ``axis`` nearest to world RAS point ``ras`` (not clipped)."""
    s, _, _ = split_kji(world_to_kji(volume_node, ras), axis)
    return int(np.floor(float(s) + 0.5))


def view_slice(volume_node, slice_node) -> tuple:
    """``(axis, index)`` of a slice view (a ``vtkMRMLSliceNode``) on ``volume_node``: the
    numpy axis whose world direction is closest to the view's normal (:func:`slice_axis`)
    and the index of the slice across it through the view's centre. Bounds, the prompt's
    slice and the mask slice are counted this way, so they are the slices the user is
    looking at whatever the volume's orientation (oblique, flipped, under a transform).
    The index is not clipped: a view outside the volume gives one out of range."""
    m = matrix_to_numpy(slice_node.GetSliceToRAS())
    axis = slice_axis(volume_node, m[:3, 2])
    return axis, slice_index_at(volume_node, m[:3, 3], axis)


def slice_plane(volume_node, axis: int, idx: int) -> tuple:
    """World ``(centre, unit normal, in-plane unit axes (2, 3), in-plane sizes (2,) in mm)`` of the
    volume's slice ``idx`` across numpy ``axis``: the rectangle covering that slice (voxel
    centres plus half a voxel), e.g. to draw a bound in the slice views."""
    a = ijk_to_world(volume_node)
    shape = volume_shape(volume_node)
    centre_kji = [(n - 1) / 2.0 for n in shape]
    centre_kji[axis] = float(idx)
    centre = kji_to_world(volume_node, np.array(centre_kji))
    rest = [2 - n for n in range(3) if n != axis]       # IJK columns of the two in-plane axes
    cols = a[:3, rest]
    lengths = np.linalg.norm(cols, axis=0)
    sizes = np.array([lengths[n] * shape[2 - c] for n, c in enumerate(rest)])
    axes = (cols / lengths).T
    # Right-handed (u, v, normal), as a markups plane needs; the normal runs along the
    # slice axis, either way (a sheared grid would tilt it: CT grids are not sheared).
    normal = np.cross(axes[0], axes[1])
    return centre, normal / np.linalg.norm(normal), axes, sizes
