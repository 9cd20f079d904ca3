"""User-facing errors.

Every problem a user can cause (bad prompt, bad file, bad checkpoint) is raised as a
``RadSAMError`` with a one-line message that names the problem, so the command line can
print it and exit with code 2, and the Slicer module can show it, instead of a traceback
from deep inside torch or SimpleITK.
"""


class RadSAMError(Exception):
    """A problem with the user's input; the message is shown to the user as is."""


class PromptError(RadSAMError):
    """A prompt that does not fit the image (outside it, degenerate, empty)."""


class BoundsError(RadSAMError):
    """Slice bounds that are reversed, outside the volume, or exclude the prompt slice."""


class ImageError(RadSAMError):
    """An image that cannot be read or is not a 3D scalar volume."""


class CheckpointError(RadSAMError):
    """A model checkpoint that is missing, corrupt, or does not match its model."""
