"""Embryo time-lapse data: synthetic simulator, TFDS access, splits and the grain pipeline.

Heavy dependencies (tensorflow_datasets, grain) are imported by the sub-modules that
need them, not here.
"""
