"""RadSAMLib: segment a whole 3D organ in a CT from one prompt with a 2D promptable model.

Plain Python (torch, numpy, SimpleITK); no Slicer import, so the command line, the
training code and the 3D Slicer module all share it. See ``docs/ARCHITECTURE.md``.
Importing the package itself loads no torch (Slicer imports it before torch is installed):
import the submodules you need, e.g. ``RadSAMLib.session``.
"""
__version__ = "0.1.0"

# The model used when none is named: LiteMedSAM plus the bundled fine-tune for mask
# prompts (RadSAMLib/weights), which won the benchmark against the base model
# (docs/benchmark/training.md). Here, not in models/, because Slicer reads it before torch.
DEFAULT_MODEL = "radsam"

from .errors import BoundsError, CheckpointError, ImageError, PromptError, RadSAMError

__all__ = ["__version__", "DEFAULT_MODEL", "RadSAMError", "PromptError", "BoundsError", "ImageError", "CheckpointError"]
