"""Source of a backbone written outside the package, for the plug-in tests (file, module, entry point)."""
from __future__ import annotations

import textwrap
from pathlib import Path

MODEL = '''
"""A user's own backbone: ID embeddings plus, per modality, a projected feature and a preference."""
import torch
from torch import nn

from ckdlab.backbones import Backbone


class {name}(Backbone):
    def __init__(self, dataset, embedding_dim=8):
        super().__init__()
        self.modalities = tuple(dataset.features)
        self.user_id = nn.Parameter(0.1 * torch.randn(dataset.n_users, embedding_dim))
        self.item_id = nn.Parameter(0.1 * torch.randn(dataset.n_items, embedding_dim))
        self.pref = nn.ParameterDict(
            {{m: nn.Parameter(0.1 * torch.randn(dataset.n_users, embedding_dim)) for m in self.modalities}})
        self.proj = nn.ModuleDict({{m: nn.Linear(f.shape[1], embedding_dim) for m, f in dataset.features.items()}})

    def forward(self, inputs):
        users = [self.user_id] + [self.mean_user_preference(self.pref[m], inputs, m) for m in self.modalities]
        items = [self.item_id] + [self.proj[m](inputs[m]) for m in self.modalities]
        return torch.cat(users, dim=1), torch.cat(items, dim=1)

    def modality_parameters(self, modality):
        return [self.pref[modality], *self.proj[modality].parameters()]
'''


def model_source(name: str = "MyNet", comment: str = "") -> str:
    return MODEL.format(name=name) + (f"\n# {comment}\n" if comment else "")


def write_model(folder: Path, name: str = "MyNet", file: str = "model.py", comment: str = "") -> Path:
    """Write the backbone class ``name`` to ``folder/file``; ``comment`` changes the bytes, not the model."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / file
    path.write_text(textwrap.dedent(model_source(name, comment)))
    return path


def write_distribution(root: Path, package: str, name: str) -> Path:
    """An installed distribution in ``root`` (add it to sys.path): ``package/models.py`` with class
    ``name``, exposed as entry point ``name`` in group ``ckdlab.backbones``."""
    write_model(root / package, name, "models.py")
    (root / package / "__init__.py").write_text("")
    info = root / f"{package}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[ckdlab.backbones]\n{name} = {package}.models:{name}\n")
    return root / package / "models.py"
