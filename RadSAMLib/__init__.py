"""RadSAMLib: segment a whole 3D organ in a CT from one prompt with a 2D promptable model.

Plain Python (torch, numpy, SimpleITK); no Slicer import, so the command line, the
training code and the 3D Slicer module all share it. See ``docs/ARCHITECTURE.md``.
Importing the package itself loads no torch (Slicer imports it before torch is installed):
import the submodules you need, e.g. ``RadSAMLib.session``.
"""
__version__ = "0.1.0"

from .catalog import DEFAULT_MODEL
from .errors import BoundsError, CheckpointError, ImageError, PromptError, RadSAMError

__all__ = ["__version__", "DEFAULT_MODEL", "RadSAMError", "PromptError", "BoundsError", "ImageError", "CheckpointError"]
