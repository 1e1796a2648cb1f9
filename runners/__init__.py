"""Catalyst runners (installed as ``encdist.runners``), registered in ``encdist.registry.RUNNERS``."""

from .adaptive import AdaptiveDistributionRunner
from .base import BaseRunner, NonFiniteLossError
from .image_compression import ImageCompressionRunner

__all__ = ["BaseRunner", "AdaptiveDistributionRunner", "ImageCompressionRunner", "NonFiniteLossError"]
