"""Torch-side data: the Dataset over a LabelSet, timm transforms, the demo data and
benchmark noise injection."""
