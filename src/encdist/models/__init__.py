"""Models registered in ``compressai.registry.MODELS``."""

from .adaptive import AdaptiveModelMixin, FactorizedPriorPdf, MeanScaleHyperpriorPdf, ScaleHyperpriorPdf

__all__ = ["AdaptiveModelMixin", "FactorizedPriorPdf", "ScaleHyperpriorPdf", "MeanScaleHyperpriorPdf"]
