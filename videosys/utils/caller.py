"""The user's frame for a warning: warnings.warn's fixed stacklevel points inside videosys (or torch's
inference_mode wrapper, whose frames sit between the engine and the pipeline) depending on the entry point."""

import os
import sys

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep  # videosys/


def user_stacklevel() -> int:
    """The stacklevel, for a warnings.warn in the function calling this, of the first frame outside videosys and
    torch: the user's line (a script, a test, the eval scripts), however many of our frames are in between."""
    import torch

    skip = (_PACKAGE, os.path.dirname(os.path.abspath(torch.__file__)) + os.sep)
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and os.path.abspath(frame.f_code.co_filename).startswith(skip):
        frame, level = frame.f_back, level + 1
    return level
