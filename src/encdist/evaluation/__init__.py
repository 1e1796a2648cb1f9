"""Evaluation: real-bitstream RD points (:mod:`.evaluate`), BD-rates (:mod:`.bd`), CompressAI-format
results files (:mod:`.results`) and figures (:mod:`.plotting`)."""
