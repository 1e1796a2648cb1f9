"""Latent codecs (CompressAI ``LatentCodec`` contract)."""

from .adaptive import MODE_ADAPTIVE, MODE_BACKWARD, MODE_MIXED, MODE_STATIC, AdaptiveEntropyBottleneckLatentCodec

__all__ = ["AdaptiveEntropyBottleneckLatentCodec", "MODE_ADAPTIVE", "MODE_MIXED", "MODE_STATIC", "MODE_BACKWARD"]
