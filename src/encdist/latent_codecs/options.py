"""How the adaptive codec codes an image: an immutable options object, passed in.

The trained weights are the same whichever way an image is coded; the encoder's
choices (send p̂ or not, fall back to the static tables, adapt them block by block,
refine the side latent) are per call. A codec holds its configured default
(``codec.options``, from the model's ``hp``) and ``compress(y, options)`` /
``evaluate_image(..., modes)`` take another one for one call, so nothing is ever
switched by changing a module's attributes. The decoder needs only ``adaptive`` and
``ideal``: everything else is written in the stream's mode byte.

Named ways of coding (:data:`CODING_MODES`), as the evaluation and the benchmark report them:

=====================  ==========================================================================
``adaptive``           the model's configured default (by default: p̂ + fallback + backward)
``static``             the static entropy bottleneck, byte-identical to CompressAI's (baseline)
``ideal``              ``p̂ = p`` sent at zero charged cost: the bound of one exact table per image
``paper``              the paper's codec: fixed p̂ tables, no fallback, no backward adaptation
``fallback``           + the per-channel static fallback (fixed tables)
``static_backward``    backward adaptation from the static tables alone: no p̂, no side stream
                       beyond the header (with the fallback to fixed static tables)
``backward``           p̂ + fallback + backward adaptation, one table per channel (the default
                       before contexts)
``static_context``     context-adaptive tables started from the codec's context tables alone (no p̂)
``default``            p̂ + fallback + context-adaptive backward adaptation, whatever the model's
                       configuration
=====================  ==========================================================================
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Dict, Mapping

__all__ = ["CodingOptions", "CODING_MODES", "resolve_options"]


@dataclass(frozen=True)
class CodingOptions:
    """One way of coding.

    Attributes:
        adaptive: ``False`` codes with the static bottleneck alone (no side stream).
        ideal: send ``p`` itself (zlib-packed counts) as ``p̂``; its cost is not charged.
        use_pdf: offer the tables of ``p̂``; ``False`` keeps the static tables as the start
            (with ``backward_adaptation``, the "no side information" arm).
        fallback_static: per image and channel, keep the cheaper of ``p̂``'s and the static
            table (and of fixed and adapted tables); never above the static bottleneck.
        backward_adaptation: adapt the tables to the symbols already coded, block by block.
        contexts: with backward adaptation, one adapted table per channel and context
            (:mod:`encdist.codec.context`): what the decoder already decoded picks the table.
        refine_steps: encoder-side refinement of the side latent (Adam steps per image).
        refine_lr: step size of the refinement.
    """

    adaptive: bool = True
    ideal: bool = False
    use_pdf: bool = True
    fallback_static: bool = True
    backward_adaptation: bool = True
    contexts: bool = True
    refine_steps: int = 0
    refine_lr: float = 0.05

    def __post_init__(self):
        if int(self.refine_steps) < 0 or not float(self.refine_lr) > 0:
            raise ValueError(f"refine_steps must be >= 0 and refine_lr > 0, got {self.refine_steps!r}, {self.refine_lr!r}")
        if self.ideal and not self.use_pdf:
            raise ValueError("ideal coding sends p: it cannot go without p̂ (use_pdf=False)")

    @property
    def backward(self) -> bool:
        """Backward adaptation in effect (the ideal bound is one fixed table per image)."""
        return self.adaptive and self.backward_adaptation and not self.ideal

    @property
    def context(self) -> bool:
        """Context-adaptive tables in effect (with backward adaptation only)."""
        return self.backward and self.contexts

    @property
    def fallback(self) -> bool:
        """The static fallback in effect (the ideal bound never falls back)."""
        return self.adaptive and self.fallback_static and not self.ideal

    def replace(self, **changes) -> "CodingOptions":
        return replace(self, **changes)


#: Named ways of coding (module docstring); ``adaptive`` is ``None``: the codec's own default.
CODING_MODES: Mapping[str, CodingOptions | None] = {
    "adaptive": None,
    "static": CodingOptions(adaptive=False),
    "ideal": CodingOptions(ideal=True, fallback_static=False, backward_adaptation=False),
    "paper": CodingOptions(fallback_static=False, backward_adaptation=False),
    "fallback": CodingOptions(backward_adaptation=False),
    "static_backward": CodingOptions(use_pdf=False, contexts=False),
    "backward": CodingOptions(contexts=False),
    "static_context": CodingOptions(use_pdf=False),
    "default": CodingOptions(),
}

OPTION_NAMES = tuple(f.name for f in fields(CodingOptions))


def resolve_options(mode: str | CodingOptions | None, default: CodingOptions) -> CodingOptions:
    """The options of a mode name (:data:`CODING_MODES`), an options object, or ``None`` (``default``)."""
    if mode is None:
        return default
    if isinstance(mode, CodingOptions):
        return mode
    if mode not in CODING_MODES:
        raise ValueError(f"unknown coding mode {mode!r} (known: {', '.join(CODING_MODES)})")
    return CODING_MODES[mode] or default


def options_from_kwargs(kwargs: Dict) -> CodingOptions:
    """Options from the codec's constructor keywords (``enable_adaptive`` is ``adaptive``)."""
    kw = {("adaptive" if k == "enable_adaptive" else k): v for k, v in kwargs.items()}
    return CodingOptions(**kw)
