"""Plain end-to-end CompressAI training (the offline base model of the quickstart)."""

from __future__ import annotations

from encdist.registry import register_runner

from .base import BaseRunner

__all__ = ["ImageCompressionRunner"]


@register_runner("ImageCompressionRunner")
class ImageCompressionRunner(BaseRunner):
    """Trains every parameter with the standard rate-distortion objective."""
