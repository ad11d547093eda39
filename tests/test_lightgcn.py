"""LightGCN through the backbone interface: propagation, scores, IDs only, training, evaluation."""
import numpy as np
import pytest
import torch

from ckdlab.backbones import available, build_backbone
from ckdlab.config import TrainConfig
from ckdlab.data import load
from ckdlab.evaluate import evaluate
from ckdlab.losses import bpr_loss
from ckdlab.modality import ModalityInputs
from ckdlab.train import fit


def dense_lightgcn(dataset, user_emb: np.ndarray, item_emb: np.ndarray, n_layers: int) -> np.ndarray:
    """The paper's formula with dense float64 matrices: mean over l of (D^-1/2 A D^-1/2)^l E^(0)."""
    n_u, n_i = dataset.n_users, dataset.n_items
    r = np.zeros((n_u, n_i))
    r[dataset.train[:, 0], dataset.train[:, 1]] = 1.0
    a = np.block([[np.zeros((n_u, n_u)), r], [r.T, np.zeros((n_i, n_i))]])
    deg = a.sum(1)
    inv = np.where(deg > 0, 1.0 / np.sqrt(np.maximum(deg, 1e-300)), 0.0)
    a_hat = inv[:, None] * a * inv[None, :]
    x = np.concatenate([user_emb, item_emb]).astype(np.float64)
    layers = [x]
    for _ in range(n_layers):
        layers.append(a_hat @ layers[-1])
    return np.mean(layers, axis=0)


@pytest.mark.parametrize("n_layers", [0, 1, 3])
def test_propagation_matches_dense_computation(tiny_dataset, n_layers):
    torch.manual_seed(0)
    model = build_backbone("LightGCN", tiny_dataset, n_layers=n_layers)
    u, i = model(ModalityInputs.from_dataset(tiny_dataset))
    want = dense_lightgcn(tiny_dataset, model.user_id.detach().numpy(), model.item_id.detach().numpy(), n_layers)
    got = torch.cat([u, i]).detach().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_isolated_item_keeps_only_its_own_layer0_share(tiny_dataset):
    """An item without training interactions gets no messages: its representation is E^(0) / (L + 1)."""
    seen = set(tiny_dataset.train[:, 1].tolist())
    unseen = [i for i in range(tiny_dataset.n_items) if i not in seen]
    assert unseen, "the tiny dataset should leave some item without training interactions"
    model = build_backbone("LightGCN", tiny_dataset, n_layers=3)
    _, items = model(ModalityInputs.from_dataset(tiny_dataset))
    assert torch.allclose(items[unseen], model.item_id[unseen] / 4)


def test_shapes_full_scores_equal_pair_scores_and_gradients(tiny_dataset):
    torch.manual_seed(0)
    model = build_backbone("lightgcn", tiny_dataset)
    assert model.n_layers == 3  # the default
    inputs = ModalityInputs.from_dataset(tiny_dataset)
    u, i = model(inputs)
    assert u.shape == (tiny_dataset.n_users, 64) and i.shape == (tiny_dataset.n_items, 64)
    users, pos, neg = torch.tensor([0, 1, 2, 3]), torch.tensor([1, 2, 3, 4]), torch.tensor([5, 6, 7, 8])
    loss = bpr_loss(model.score_pairs(u, i, users, pos), model.score_pairs(u, i, users, neg))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    full = (u @ i.T).detach()
    assert torch.allclose(full[users, pos], model.score_pairs(u, i, users, pos).detach(), atol=1e-6)


def test_ids_only_features_do_not_change_scores(tiny_dataset):
    torch.manual_seed(0)
    model = build_backbone("LightGCN", tiny_dataset)
    inputs = ModalityInputs.from_dataset(tiny_dataset)
    with torch.no_grad():
        base = torch.cat(model(inputs))
        noisy = inputs
        for m in inputs.names:
            noisy = noisy.with_features(m, torch.randn_like(inputs.raw(m)) * 5)
        assert torch.equal(base, torch.cat(model(noisy.ablate(*inputs.names[:1]))))


def test_l2_is_on_layer0_embeddings(tiny_dataset):
    torch.manual_seed(0)
    model = build_backbone("LightGCN", tiny_dataset)
    u, i = model(ModalityInputs.from_dataset(tiny_dataset))
    users, pos, neg = torch.tensor([0, 0, 5]), torch.tensor([1, 2, 3]), torch.tensor([4, 5, 6])
    want = (model.user_id[users].pow(2).sum() + model.item_id[pos].pow(2).sum()
            + model.item_id[neg].pow(2).sum()) / (2 * 3)
    assert torch.allclose(model.regularization(u, i, users, pos, neg), want)


def test_registered_next_to_the_other_reference_recommenders(tiny_dataset):
    assert {"LightGCN", "MF", "Pop"} <= set(available())
    with pytest.raises(ValueError, match="n_layers"):
        build_backbone("LightGCN", tiny_dataset, n_layers=-1)


def test_training_beats_untrained_and_channels_equal_overall():
    ds = load("synthetic", n_users=300, n_items=250)
    torch.manual_seed(0)
    before = evaluate(build_backbone("LightGCN", ds), ModalityInputs.from_dataset(ds), ds, "valid", (20,))
    config = TrainConfig(backbone="LightGCN", max_epochs=3, batch_size=1024, lr=5e-3, seed=0, device="cpu",
                         ks=(20,), eval_by_modality=False, progress=False)
    result = fit(ds, config)
    assert result.valid["recall@20"] > before["recall@20"] + 0.03
    # content is ignored: every uni-modal channel scores as the full model
    for metrics in result.test_by_modality.values():
        assert metrics == pytest.approx(result.test)
