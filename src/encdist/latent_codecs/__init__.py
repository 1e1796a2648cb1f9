"""Latent codecs (CompressAI ``LatentCodec`` contract) and how they code (:class:`CodingOptions`)."""

from encdist.codec.bitstream import MODE_ADAPTIVE, MODE_BACKWARD, MODE_CONTEXT, MODE_MIXED, MODE_STATIC

from .adaptive import AdaptiveEntropyBottleneckLatentCodec
from .options import CODING_MODES, CodingOptions, resolve_options

__all__ = [
    "AdaptiveEntropyBottleneckLatentCodec",
    "CodingOptions",
    "CODING_MODES",
    "resolve_options",
    "MODE_ADAPTIVE",
    "MODE_MIXED",
    "MODE_STATIC",
    "MODE_BACKWARD",
    "MODE_CONTEXT",
]
