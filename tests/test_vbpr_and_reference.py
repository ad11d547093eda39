"""VBPR, DeepStyle, MF and Pop through the backbone interface; ablation as data."""
import numpy as np
import pytest
import torch

from ckdlab.backbones import available, build_backbone
from ckdlab.losses import bpr_loss
from ckdlab.modality import ModalityInputs


def perturbed(inputs: ModalityInputs, modality: str, seed: int = 0) -> ModalityInputs:
    """Same inputs with ``modality``'s item rows shuffled and noised, keeping the item mean."""
    g = torch.Generator().manual_seed(seed)
    base = inputs.raw(modality)
    noise = torch.randn(base.shape, generator=g) * 3
    noise = noise - noise.mean(0, keepdim=True)
    return inputs.with_features(modality, base[torch.randperm(base.shape[0], generator=g)] + noise)


def full_scores(model, inputs):
    with torch.no_grad():
        u, i = model(inputs)
    return u @ i.T


@pytest.mark.parametrize("name", ["VBPR", "DeepStyle"])
def test_ablation_makes_scores_independent_of_that_modality(tiny_dataset, name):
    torch.manual_seed(0)
    model = build_backbone(name, tiny_dataset)
    # give the content parts non-trivial weights so that content matters
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    inputs = ModalityInputs.from_dataset(tiny_dataset)
    for m in inputs.names:
        ablated = inputs.ablate(m)
        assert torch.allclose(full_scores(model, ablated), full_scores(model, perturbed(ablated, m)), atol=1e-5)
        assert not torch.allclose(full_scores(model, inputs), full_scores(model, perturbed(inputs, m)), atol=1e-3)


def test_vbpr_user_preference_is_mean_ablated(tiny_dataset):
    torch.manual_seed(0)
    model = build_backbone("vbpr", tiny_dataset)
    inputs = ModalityInputs.from_dataset(tiny_dataset).only("image")
    u, _ = model(inputs)
    d = model.embedding_dim
    text_part = u[:, 2 * d:3 * d]  # order: id, image, text, constant
    assert torch.allclose(text_part, text_part.mean(0, keepdim=True).expand_as(text_part))
    assert not torch.allclose(u[:, d:2 * d], u[:, d:2 * d].mean(0, keepdim=True).expand_as(u[:, d:2 * d]))


@pytest.mark.parametrize("name", ["VBPR", "DeepStyle", "MF"])
def test_forward_backward_and_pair_scores(tiny_dataset, name):
    torch.manual_seed(0)
    model = build_backbone(name, tiny_dataset)
    inputs = ModalityInputs.from_dataset(tiny_dataset)
    users = torch.tensor([0, 1, 2, 3])
    pos, neg = torch.tensor([1, 2, 3, 4]), torch.tensor([5, 6, 7, 8])
    u, i = model(inputs)
    loss = bpr_loss(model.score_pairs(u, i, users, pos), model.score_pairs(u, i, users, neg))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    full = (u @ i.T).detach()
    assert torch.allclose(full[users, pos], model.score_pairs(u, i, users, pos).detach(), atol=1e-5)


def test_vbpr_score_decomposes_as_documented(tiny_dataset):
    torch.manual_seed(0)
    model = build_backbone("VBPR", tiny_dataset)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    inputs = ModalityInputs.from_dataset(tiny_dataset)
    u, i = model(inputs)
    want = model.user_id @ model.item_id.T + model.item_bias.T
    for m in model.modalities:
        e = inputs[m]
        want = want + model.user_pref[m] @ model.projection[m](e).T + model.content_bias[m](e).T
    assert torch.allclose(u @ i.T, want, atol=1e-4)


def test_registry_is_case_insensitive_and_lists_names(tiny_dataset):
    assert {"VBPR", "DeepStyle", "MF", "Pop"} <= set(available())
    assert type(build_backbone("vbpr", tiny_dataset)).__name__ == "VBPR"
    with pytest.raises(KeyError, match="unknown backbone"):
        build_backbone("nope", tiny_dataset)


def test_pop_ranks_by_training_count(tiny_dataset):
    model = build_backbone("Pop", tiny_dataset)
    u, i = model(ModalityInputs.from_dataset(tiny_dataset))
    counts = np.bincount(tiny_dataset.train[:, 1], minlength=tiny_dataset.n_items)
    assert np.array_equal((u @ i.T)[0].numpy(), counts.astype(np.float32))
    assert not model.trainable


def test_deepstyle_uses_categories_when_present(tiny_dataset):
    assert build_backbone("DeepStyle", tiny_dataset).style_source == "item"
    tiny_dataset.item_category = np.arange(tiny_dataset.n_items) % 3
    model = build_backbone("DeepStyle", tiny_dataset)
    assert model.style_source == "category" and model.category_vector.shape[0] == 3
