"""Example backbones written the way user code would be: outside :mod:`ckdlab.backbones`.

They are plug-ins (keyed by name and source hash), not built-ins; see
docs/backbones.md and notebooks/custom_backbone.ipynb.
"""
