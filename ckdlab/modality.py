"""Item features as one object, with ablation expressed as data.

``inputs.ablate("image")`` returns inputs whose image rows are all the mean image
feature over items (paper eq. 8 and 10). A backbone never receives a mode flag:
it reads ``inputs[m]`` for item features and asks ``inputs.is_ablated(m)`` to
replace its own user-side preference for ``m`` by the mean over users.
"""
from __future__ import annotations

from typing import Iterable, Mapping

import torch


class ModalityInputs:
    """Item features per modality, some of which may be mean-ablated.

    Parameters
    ----------
    features : mapping of str to torch.Tensor
        ``(n_items, d_m)`` float tensors, one per modality (the real, un-ablated features).
    ablated : iterable of str, optional
        Modalities whose item rows are replaced by the item mean.
    """

    def __init__(self, features: Mapping[str, torch.Tensor], ablated: Iterable[str] = ()):
        self._features = dict(features)
        self._means = {m: f.mean(dim=0, keepdim=True) for m, f in self._features.items()}
        self._ablated = frozenset(ablated)
        unknown = self._ablated - set(self._features)
        if unknown:
            raise KeyError(f"cannot ablate unknown modalities {sorted(unknown)}; have {self.names}")

    @classmethod
    def from_dataset(cls, dataset, device: str | torch.device = "cpu") -> "ModalityInputs":
        return cls({m: torch.as_tensor(f, dtype=torch.float32, device=device) for m, f in dataset.features.items()})

    def _with(self, ablated: Iterable[str]) -> "ModalityInputs":
        # Share the tensors and their precomputed means; only the ablation set changes.
        new = object.__new__(ModalityInputs)
        new._features, new._means, new._ablated = self._features, self._means, frozenset(ablated)
        unknown = new._ablated - set(self._features)
        if unknown:
            raise KeyError(f"cannot ablate unknown modalities {sorted(unknown)}; have {self.names}")
        return new

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._features)

    @property
    def dims(self) -> dict[str, int]:
        return {m: int(f.shape[1]) for m, f in self._features.items()}

    @property
    def n_items(self) -> int:
        return int(next(iter(self._features.values())).shape[0])

    @property
    def ablated(self) -> frozenset[str]:
        return self._ablated

    @property
    def device(self) -> torch.device:
        return next(iter(self._features.values())).device

    def is_ablated(self, modality: str) -> bool:
        return modality in self._ablated

    def __getitem__(self, modality: str) -> torch.Tensor:
        """Item features of ``modality``; the broadcast item mean when ablated."""
        if modality in self._ablated:
            f = self._features[modality]
            return self._means[modality].expand_as(f)
        return self._features[modality]

    def ablate(self, *modalities: str) -> "ModalityInputs":
        """Inputs with ``modalities`` additionally mean-ablated."""
        return self._with(self._ablated | set(modalities))

    def only(self, modality: str) -> "ModalityInputs":
        """Inputs with every modality but ``modality`` ablated (a uni-modal channel)."""
        return self._with(set(self.names) - {modality})

    def mean(self, modality: str) -> torch.Tensor:
        """The (1, d_m) item-mean feature of ``modality`` (what ablation broadcasts)."""
        return self._means[modality]

    def raw(self, modality: str) -> torch.Tensor:
        """The real, un-ablated features of ``modality``."""
        return self._features[modality]

    def with_features(self, modality: str, features: torch.Tensor) -> "ModalityInputs":
        """Same inputs (same ablation set) with ``modality``'s raw features replaced."""
        if modality not in self._features:
            raise KeyError(f"unknown modality {modality!r}; have {self.names}")
        return ModalityInputs({**self._features, modality: features}, self._ablated)

    def to(self, device) -> "ModalityInputs":
        return ModalityInputs({m: f.to(device) for m, f in self._features.items()}, self._ablated)

    def __repr__(self) -> str:
        parts = [f"{m}[{d}]{' (ablated)' if m in self._ablated else ''}" for m, d in self.dims.items()]
        return f"ModalityInputs({', '.join(parts)})"
