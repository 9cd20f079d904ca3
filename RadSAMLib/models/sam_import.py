"""Import SAM's model code (``segment-anything``) without torchvision.

``import segment_anything`` runs the package's ``__init__``, which also imports its
``SamPredictor`` and ``SamAutomaticMaskGenerator``; those import torchvision (image
resizing, box NMS). The model code RadSAM uses, ``build_sam`` and ``modeling``, needs
torch and numpy only. torchvision is not among RadSAM's requirements: in Slicer it would
have to match the torch build the PyTorch extension chose, and everywhere importing it
costs seconds and memory on a cold start. So, unless ``segment_anything`` is already
imported, its ``build_sam`` module is loaded under a private package name from the
installed package's folder, without running that ``__init__``; a later
``import segment_anything`` (by the user, by another Slicer module) is untouched and
gets the real, complete package.
"""
from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import threading

from ..errors import CheckpointError

_LOCK = threading.Lock()
_PRIVATE = "RadSAMLib.models._segment_anything"   # the bare package the model code loads under

INSTALL_HINT = ("install it: in 3D Slicer the RadSAM module installs it on first use; elsewhere "
                "pip install segment-anything")


def sam_model_registry() -> dict:
    """``segment_anything.sam_model_registry`` (``{"vit_b": builder, ...}``); a
    :class:`CheckpointError` naming what is missing when it cannot be imported."""
    with _LOCK:
        full = sys.modules.get("segment_anything")
        if full is not None and hasattr(full, "sam_model_registry"):
            return full.sam_model_registry
        if _PRIVATE + ".build_sam" not in sys.modules:
            _load_private()
        return sys.modules[_PRIVATE + ".build_sam"].sam_model_registry


def _load_private() -> None:
    try:
        spec = importlib.util.find_spec("segment_anything")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(f"SAM models need the 'segment-anything' package, which is not installed: {INSTALL_HINT}")
    bare = importlib.machinery.ModuleSpec(_PRIVATE, None, is_package=True)
    bare.submodule_search_locations = list(spec.submodule_search_locations)
    sys.modules[_PRIVATE] = importlib.util.module_from_spec(bare)   # no __init__: that is what imports torchvision
    try:
        importlib.import_module(_PRIVATE + ".build_sam")
    except ImportError as e:
        for name in [n for n in sys.modules if n == _PRIVATE or n.startswith(_PRIVATE + ".")]:
            del sys.modules[name]
        what = (e.name or "").split(".")[0]
        if what and what not in ("segment_anything", "RadSAMLib"):
            raise CheckpointError(f"SAM models need the '{what}' package, which segment-anything's model code "
                                  f"imports and which is not installed ({e}): install it with pip (in 3D Slicer: "
                                  f"slicer.util.pip_install('{what}'))") from e
        raise CheckpointError(f"segment-anything is installed but cannot be imported ({e}): {INSTALL_HINT}") from e
