"""foodlab: fast, measurable food segmentation training and benchmarking with SAM2."""

__version__ = "0.1.0"
