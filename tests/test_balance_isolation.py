"""The two baselines train only on what they should.

* OGM-GE's noise never moves a parameter entry that got no gradient in the step
  (under Adam a tiny noise on an untouched row is a step of about ``lr``).
* Gradient Blending's held-out interactions are in nothing the model trains on:
  neither the propagation graphs of the graph backbones nor the BPR sampler.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from ckdlab.backbones import build_backbone
from ckdlab.balance import Batch, TrainContext
from ckdlab.balance.base import TrainingView
from ckdlab.balance.gb import holdout_split
from ckdlab.balance.ogm import OGMGE
from ckdlab.checkpoint import checkpoint_path
from ckdlab.config import TrainConfig
from ckdlab.data.samplers import BPRSampler
from ckdlab.graph import EdgeList, SparseMatrix
from ckdlab.modality import ModalityInputs
from ckdlab.train import _Trainer, train_epoch

from conftest import make_tiny_dataset

# -- OGM-GE: no noise where there is no gradient ------------------------------------------------------


def _ogm_run(ds, ogm: OGMGE, seed: int = 0):
    """A VBPR model (fixed init), its initial parameters and Adam, with ``ogm`` set up on it."""
    config = TrainConfig(backbone="VBPR", device="cpu", progress=False, seed=seed)
    inputs = ModalityInputs.from_dataset(ds)
    torch.manual_seed(0)
    model = build_backbone("VBPR", ds, embedding_dim=8)
    ogm.setup(TrainContext(ds, config, torch.device("cpu"), Path("/nonexistent-cache"), inputs), model)
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    return model, inputs, torch.optim.Adam(model.parameters(), lr=1e-2), initial


def _one_step(model, ogm, inputs, optimizer, batch: Batch) -> None:
    loss, _ = ogm.batch_loss(model, inputs, batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    ogm.after_backward(model)
    optimizer.step()


def _batch_of_users(ds, users: np.ndarray, seed: int = 0) -> Batch:
    """One training positive and a random negative for each of ``users``."""
    rng = np.random.default_rng(seed)
    mat = ds.train_matrix
    pos = [rng.choice(mat.indices[mat.indptr[u]:mat.indptr[u + 1]]) for u in users]
    neg = rng.integers(ds.n_items, size=len(users))
    return Batch(*(torch.as_tensor(np.asarray(a), dtype=torch.long) for a in (users, pos, neg)))


def test_ogm_ge_one_step_leaves_absent_users_rows_unchanged():
    ds = make_tiny_dataset()
    present = np.arange(0, ds.n_users, 3)
    absent = np.setdiff1d(np.arange(ds.n_users), present)
    batch = _batch_of_users(ds, present)
    after = {}
    for ge in (True, False):
        ogm = OGMGE(alpha=0.5, ge=ge)  # default: the noise only where the gradient is non-zero
        model, inputs, optimizer, initial = _ogm_run(ds, ogm)
        _one_step(model, ogm, inputs, optimizer, batch)
        for m in ds.modalities:
            pref = model.user_pref[m].detach()
            assert torch.equal(pref[absent], initial[f"user_pref.{m}"][absent]), (ge, m)
            assert not torch.equal(pref[present], initial[f"user_pref.{m}"][present])  # the step did act
        after[ge] = {m: model.user_pref[m].detach().clone() for m in ds.modalities}
    # GE is on: the rows the batch touched moved differently from plain OGM
    for m in ds.modalities:
        assert not torch.allclose(after[True][m][present], after[False][m][present], rtol=0, atol=1e-7), m


def test_ogm_ge_many_steps_never_moves_users_the_sampler_never_draws():
    ds = make_tiny_dataset()
    absent = np.arange(20, ds.n_users)  # no training interaction in the sampler: never in a batch
    mat = ds.train_matrix.tolil()
    mat[absent] = 0
    sampler = BPRSampler(sp.csr_matrix(mat), seed=1)
    ogm = OGMGE(alpha=0.5)
    model, inputs, optimizer, initial = _ogm_run(ds, ogm, seed=2)
    for _ in range(3):  # 3 epochs x 5 steps
        train_epoch(model, ogm, inputs, sampler, optimizer, 24, torch.device("cpu"))
    plain = OGMGE(alpha=0.5, ge=False)
    plain_model, plain_inputs, plain_opt, _ = _ogm_run(ds, plain, seed=2)
    sampler = BPRSampler(sp.csr_matrix(mat), seed=1)
    for _ in range(3):
        train_epoch(plain_model, plain, plain_inputs, sampler, plain_opt, 24, torch.device("cpu"))
    for m in ds.modalities:
        name = f"user_pref.{m}"
        assert torch.equal(model.user_pref[m].detach()[absent], initial[name][absent]), m
        # the drawn users' rows did get noise: not the plain-OGM trajectory
        drawn_ge, drawn_plain = model.user_pref[m].detach()[:20], plain_model.user_pref[m].detach()[:20]
        assert not torch.allclose(drawn_ge, drawn_plain, rtol=0, atol=1e-6), m


def test_ogm_whole_table_noise_is_only_an_explicit_option():
    assert OGMGE().ge_touched_only is True
    ds = make_tiny_dataset()
    present = np.arange(0, ds.n_users, 3)
    absent = np.setdiff1d(np.arange(ds.n_users), present)
    ogm = OGMGE(ge_touched_only=False)
    model, inputs, optimizer, initial = _ogm_run(ds, ogm)
    _one_step(model, ogm, inputs, optimizer, _batch_of_users(ds, present))
    # the handicapped form: Adam turns the noise on untouched rows into steps of about lr
    moved = (model.user_pref["image"].detach()[absent] - initial["user_pref.image"][absent]).abs()
    assert moved.mean() > 1e-3


# -- Gradient Blending: the held-out slice is out of the graphs and the sampler ---------------------------

GRAPH_BACKBONES = ("GRCN", "EgoGCN", "MMGCN", "MGCN")


def _trainer(ds, backbone: str, method: str, tmp_path) -> _Trainer:
    params = {"super_epoch": 2} if method == "gb" else {}
    config = TrainConfig(backbone=backbone, method=method, method_params=params, backbone_params={"embedding_dim": 8},
                         max_epochs=1, batch_size=32, device="cpu", progress=False, seed=3, checkpoint_every=0)
    return _Trainer(ds, config, cache_dir=tmp_path)


def _pattern(module) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """``(rows, cols, shape)`` of the non-zero pattern of an EdgeList or SparseMatrix."""
    if isinstance(module, EdgeList):
        return module.dst.numpy(), module.src.numpy(), module.shape
    rows = np.repeat(np.arange(module.shape[0]), np.diff(module.crow.long().numpy()))
    return rows, module.col.long().numpy(), tuple(module.shape)


def _interaction_graphs(model, n_users: int, n_items: int) -> dict[str, set]:
    """The ``(user, item)`` pairs that are edges of each user-item graph structure of ``model``.

    Joint graphs (users + items) count a pair only if both directions are edges;
    item-item graphs (MGCN's kNN) are no interaction graphs and are skipped.
    """
    n = n_users + n_items
    out = {}
    for name, module in model.named_modules():
        if not isinstance(module, (EdgeList, SparseMatrix)):
            continue
        rows, cols, shape = _pattern(module)
        if shape == (n_users, n_items):
            out[name] = set(zip(rows.tolist(), cols.tolist()))
        elif shape == (n, n):
            edges = set(zip(rows.tolist(), cols.tolist()))
            out[name] = {(int(u), int(i) - n_users) for u, i in edges
                         if u < n_users <= i and (i, u) in edges}
    return out


@pytest.mark.parametrize("backbone", GRAPH_BACKBONES)
def test_gb_holdout_pairs_are_no_edges_of_the_trained_graphs(backbone, tmp_path):
    ds = make_tiny_dataset()
    gb = _trainer(ds, backbone, "gb", tmp_path)
    hold = {tuple(p) for p in gb.method.hold_pairs.tolist()}
    _, hold_idx = holdout_split(ds.train, 0.1, 3)  # from the dataset and the seed alone
    assert hold == {tuple(p) for p in ds.train[hold_idx].tolist()} and hold
    keep = {tuple(p) for p in ds.train.tolist()} - hold
    graphs = _interaction_graphs(gb.model, ds.n_users, ds.n_items)
    assert graphs, f"{backbone}: no user-item graph structure found"
    for name, pairs in graphs.items():
        assert not pairs & hold, f"{backbone}.{name} has held-out pairs as edges"
        assert pairs == keep, name
    # without GB the same pairs are edges of the same structures
    plain = _interaction_graphs(_trainer(ds, backbone, "none", tmp_path).model, ds.n_users, ds.n_items)
    assert set(plain) == set(graphs)
    for name, pairs in plain.items():
        assert hold <= pairs, name


def test_gb_sampler_never_draws_a_holdout_pair_and_evaluation_keeps_the_dataset(tmp_path):
    ds = make_tiny_dataset()
    trainer = _trainer(ds, "VBPR", "gb", tmp_path)
    hold = {tuple(p) for p in trainer.method.hold_pairs.tolist()}
    keep = {tuple(p) for p in trainer.method.keep_pairs.tolist()}
    for _ in range(3):
        drawn = []
        for users, pos, _neg in trainer.sampler.epoch(32):
            drawn += list(zip(users.tolist(), pos.tolist()))
        assert not set(drawn) & hold
        assert sorted(drawn) == sorted(keep)  # every kept pair once per epoch
    # the model trains on a view; evaluation, checkpoints and caches keep the original dataset
    assert isinstance(trainer.train_data, TrainingView) and trainer.dataset is ds
    assert trainer.method.ctx.dataset is ds
    assert trainer.checkpoint == checkpoint_path(trainer.config, ds, tmp_path)
    assert len(trainer.train_data.valid) == len(trainer.train_data.test) == 0
    with pytest.raises(RuntimeError, match="training view"):
        trainer.train_data.fingerprint
    # other methods train on the dataset itself
    assert _trainer(ds, "VBPR", "ogm", tmp_path).train_data is ds
