"""ckdlab: modality imbalance in multimedia recommendation (backbones, CKD, baselines).

``ckdlab.register_backbone`` and ``ckdlab.register_method`` are the two plug-in
decorators (docs/backbones.md) and ``ckdlab.tune`` the hyperparameter search
(:func:`ckdlab.tuning.tune`, needs the ``tune`` extra); they are loaded on first
use so that importing a light module such as ``ckdlab.config`` does not import
torch (or Optuna).
"""

_EXPORTS = {"register_backbone": ("ckdlab.backbones", "register_backbone"),
            "register_method": ("ckdlab.balance", "register_method"),
            "tune": ("ckdlab.tuning", "tune")}


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        module, attr = _EXPORTS[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'ckdlab' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
