"""Recipes that produce committed artefacts (the RD family of frozen transforms)."""
