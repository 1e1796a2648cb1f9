"""Config handling: the generic factory and Hydra helpers."""

from .factory import *  # noqa: F401,F403
from .factory import __all__  # noqa: F401
