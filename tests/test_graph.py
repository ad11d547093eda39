"""The shared sparse machinery of the graph backbones (ckdlab.graph)."""
from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch

from ckdlab.graph import (EdgeList, SparseMatrix, joint_graph, normalized_adjacency, segment_softmax,
                          user_item_graph)


def _random_edges(n_dst, n_src, n_edges, seed=0):
    """Unique random ``(dst, src)`` pairs, shuffled (EdgeList sorts them)."""
    g = torch.Generator().manual_seed(seed)
    key = torch.unique(torch.randint(n_dst, (n_edges,), generator=g) * n_src
                       + torch.randint(n_src, (n_edges,), generator=g))
    key = key[torch.randperm(len(key), generator=g)]
    return key // n_src, key % n_src


def _symmetric_edges(n, n_edges, seed=0):
    dst, src = _random_edges(n, n, n_edges, seed)
    key = torch.unique(torch.cat([dst * n + src, src * n + dst]))
    return key // n, key % n


def _dense(edges, values):
    return torch.zeros(edges.n_dst, edges.n_src, dtype=values.dtype).index_put_((edges.dst, edges.src), values)


# -- construction ----------------------------------------------------------------------------
def test_edges_are_sorted_and_csr_indices_consistent():
    dst, src = _random_edges(7, 9, 40)
    e = EdgeList(dst, src, 7, 9)
    assert e.shape == (7, 9) and len(e) == e.n_edges == len(dst)
    key = e.dst * 9 + e.src
    assert bool((key.diff() > 0).all())
    assert set(key.tolist()) == set((dst * 9 + src).tolist())
    w = torch.rand(e.n_edges)
    torch.testing.assert_close(e.matrix(w).to_dense(), _dense(e, w))
    torch.testing.assert_close(e.matrix_t(w).to_dense(), _dense(e, w).T)
    assert not e.symmetric
    # state_dict stays empty: the edges are rebuilt from the data, not saved
    assert e.state_dict() == {}


def test_repeated_edges_and_out_of_range():
    dst, src = torch.tensor([0, 1, 0]), torch.tensor([2, 0, 2])
    with pytest.raises(ValueError, match="repeated"):
        EdgeList(dst, src, 3)
    e = EdgeList(dst, src, 3, dedupe=True)
    assert e.n_edges == 2
    with pytest.raises(ValueError, match="range"):
        EdgeList(torch.tensor([0, 5]), torch.tensor([1, 1]), 3)


def test_joint_graph_is_both_directions_once(tiny_dataset):
    ds = tiny_dataset
    e = joint_graph(ds.train, ds.n_users, ds.n_items)
    n = ds.n_users + ds.n_items
    pairs = set(zip(e.dst.tolist(), e.src.tolist()))
    assert e.shape == (n, n) and len(pairs) == e.n_edges == 2 * len(ds.train)
    assert all((s, d) in pairs for d, s in pairs)
    assert e.symmetric
    # perm_t maps every edge to its reverse on a symmetric graph
    assert torch.equal(e.dst[e.perm_t], e.src) and torch.equal(e.src[e.perm_t], e.dst)
    # a repeated interaction is one edge
    doubled = joint_graph(np.concatenate([ds.train, ds.train[:5]]), ds.n_users, ds.n_items)
    assert torch.equal(doubled.dst, e.dst) and torch.equal(doubled.src, e.src)


def test_user_item_graph(tiny_dataset):
    ds = tiny_dataset
    e = user_item_graph(ds.train, ds.n_users, ds.n_items)
    assert e.shape == (ds.n_users, ds.n_items) and e.n_edges == len(ds.train)
    assert set(zip(e.dst.tolist(), e.src.tolist())) == set(map(tuple, ds.train.tolist()))


@pytest.mark.parametrize("kind", ["sym", "mean"])
def test_normalization_equals_normalized_adjacency(kind, tiny_dataset):
    ds = tiny_dataset
    e = joint_graph(ds.train, ds.n_users, ds.n_items)
    ref = normalized_adjacency(ds.train, ds.n_users, ds.n_items, kind).to_dense()
    torch.testing.assert_close(_dense(e, e.normalization(kind)), ref)
    torch.testing.assert_close(e.operator(e.normalization(kind)).to_dense(), ref)
    with pytest.raises(ValueError):
        e.normalization("bogus")


def test_user_item_block_normalization(tiny_dataset):
    """``R = D_u^-1/2 A D_i^-1/2`` with user and item degrees (MGCN's user-item block)."""
    ds = tiny_dataset
    e = user_item_graph(ds.train, ds.n_users, ds.n_items)
    du = np.bincount(ds.train[:, 0], minlength=ds.n_users)
    di = np.bincount(ds.train[:, 1], minlength=ds.n_items)
    ref = np.zeros((ds.n_users, ds.n_items), dtype=np.float64)
    ref[ds.train[:, 0], ds.train[:, 1]] = 1 / np.sqrt(du[ds.train[:, 0]] * di[ds.train[:, 1]])
    torch.testing.assert_close(_dense(e, e.normalization("sym")), torch.as_tensor(ref, dtype=torch.float32))
    # the joint graph's user <- item block is the same matrix
    j = joint_graph(ds.train, ds.n_users, ds.n_items)
    block = _dense(j, j.normalization("sym"))[: ds.n_users, ds.n_users:]
    torch.testing.assert_close(block, torch.as_tensor(ref, dtype=torch.float32))


# -- differentiable operations -------------------------------------------------------------
@pytest.mark.parametrize("shape", [(7, 9), (9, 7)])
def test_spmm_matches_index_add_and_gradcheck(shape):
    n_dst, n_src = shape
    dst, src = _random_edges(n_dst, n_src, 40)
    e = EdgeList(dst, src, n_dst, n_src)
    w = torch.rand(e.n_edges, dtype=torch.float64, requires_grad=True)
    x = torch.randn(n_src, 3, dtype=torch.float64, requires_grad=True)
    ref = torch.zeros(n_dst, 3, dtype=torch.float64).index_add(0, e.dst, w[:, None] * x[e.src])
    torch.testing.assert_close(e.spmm(w, x), ref)
    assert torch.autograd.gradcheck(e.spmm, (w, x))
    # a constant weight: gradient to x only
    xg, = torch.autograd.grad(e.spmm(w.detach(), x).sum(), x)
    torch.testing.assert_close(xg, _dense(e, w.detach()).T @ torch.ones(n_dst, 3, dtype=torch.float64))
    with pytest.raises(ValueError):
        e.spmm(w, torch.randn(n_src + 1, 3, dtype=torch.float64))


@pytest.mark.parametrize("shape", [(7, 9), (9, 7)])
def test_dot_matches_gather_and_gradcheck(shape):
    n_dst, n_src = shape
    dst, src = _random_edges(n_dst, n_src, 40, seed=1)
    e = EdgeList(dst, src, n_dst, n_src)
    a = torch.randn(n_dst, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(n_src, 4, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(e.dot(a, b), (a[e.dst] * b[e.src]).sum(-1))
    assert torch.autograd.gradcheck(e.dot, (a, b))


def test_self_dot_on_symmetric_graph():
    dst, src = _symmetric_edges(10, 30, seed=2)
    e = EdgeList(dst, src, 10)
    assert e.symmetric
    x = torch.randn(10, 4, dtype=torch.float64, requires_grad=True)
    ref = (x[e.dst] * x[e.src]).sum(-1)
    torch.testing.assert_close(e.dot(x, x), ref)
    assert torch.autograd.gradcheck(lambda t: e.dot(t, t), (x,))
    go = torch.randn(e.n_edges, dtype=torch.float64)
    torch.testing.assert_close(torch.autograd.grad((e.dot(x, x) * go).sum(), x)[0],
                               torch.autograd.grad((ref * go).sum(), x)[0])


def test_sddmm_gather_fallback(monkeypatch):
    dst, src = _random_edges(6, 5, 20, seed=3)
    e = EdgeList(dst, src, 6, 5)
    a, b = torch.randn(6, 3), torch.randn(5, 3)
    fast = e.sddmm(a, b)

    def unsupported(*args, **kwargs):
        raise NotImplementedError("no sampled_addmm here")

    monkeypatch.setattr(torch.sparse, "sampled_addmm", unsupported)
    torch.testing.assert_close(e.sddmm(a, b), fast)


def test_edge_softmax_matches_dense_and_gradcheck():
    g = torch.Generator().manual_seed(0)
    dst, src = _random_edges(8, 6, 30)
    e = EdgeList(dst, src, 8, 6)
    logits = torch.randn(e.n_edges, generator=g, dtype=torch.float64) * 5
    out = e.softmax(logits)
    for k in range(8):
        sel = e.dst == k
        if sel.any():
            torch.testing.assert_close(out[sel], torch.softmax(logits[sel], dim=0))
    has = torch.unique(e.dst)
    torch.testing.assert_close(e.row_sum(out)[has], torch.ones(len(has), dtype=torch.float64))
    torch.testing.assert_close(out, segment_softmax(logits, e.dst, e.n_dst))
    assert torch.autograd.gradcheck(e.softmax, (logits.clone().requires_grad_(),))


def test_segment_softmax_unsorted_index():
    g = torch.Generator().manual_seed(0)
    index = torch.randint(0, 6, (40,), generator=g)
    logits = torch.randn(40, generator=g) * 5
    out = segment_softmax(logits, index, 8)
    for k in range(6):
        sel = index == k
        if sel.any():
            torch.testing.assert_close(out[sel], torch.softmax(logits[sel], dim=0))


# -- constant operator ------------------------------------------------------------------------
def test_sparse_matrix_operator_matches_dense():
    g = torch.Generator().manual_seed(0)
    dense = torch.rand(7, 5, generator=g) * (torch.rand(7, 5, generator=g) > 0.5)
    op = SparseMatrix(dense.to_sparse())
    x = torch.randn(5, 3, generator=g, requires_grad=True)
    torch.testing.assert_close(op.to_dense(), dense)
    y = op(x)
    torch.testing.assert_close(y, dense @ x)
    go = torch.randn(7, 3, generator=g)
    torch.testing.assert_close(torch.autograd.grad((y * go).sum(), x)[0], dense.T @ go)
    clone = copy.deepcopy(op)  # with its CSR cache filled
    torch.testing.assert_close(clone(x), y)
    torch.testing.assert_close(pickle.loads(pickle.dumps(op))(x), y)
    with pytest.raises(TypeError):
        op(x.double())


def test_sparse_matrix_from_edges_and_dtype_move():
    dst, src = _random_edges(6, 4, 15, seed=4)
    e = EdgeList(dst, src, 6, 4)
    w = torch.rand(e.n_edges)
    op = e.operator(w)
    x = torch.randn(4, 2, requires_grad=True)
    torch.testing.assert_close(op(x), _dense(e, w) @ x)
    assert torch.autograd.gradcheck(lambda t: op.double()(t), (x.detach().double().requires_grad_(),))
    # the cast above cleared the cached float32 CSR tensors: float64 in, float64 out
    assert op(x.detach().double()).dtype == torch.float64
    assert op.state_dict() == {}
    with pytest.raises(ValueError):
        e.operator(torch.rand(e.n_edges + 1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu():
    dst, src = _symmetric_edges(50, 300, seed=5)
    e = EdgeList(dst, src, 50)
    op = e.operator(e.normalization("sym"))
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(50, 8, generator=g), torch.randn(50, 8, generator=g)
    w = torch.rand(e.n_edges, generator=g)

    def run(edges, op, a, b, w):
        a, b, w = (t.clone().requires_grad_() for t in (a, b, w))
        out = (edges.spmm(edges.softmax(w), a).sum() + edges.dot(a, b).pow(2).sum() + edges.dot(a, a).sum()
               + op(b).pow(2).sum())
        out.backward()
        return [out.detach(), a.grad, b.grad, w.grad]

    cpu = run(e, op, a, b, w)
    e_gpu, op_gpu = e.to("cuda"), op.to("cuda")
    gpu = run(e_gpu, op_gpu, a.cuda(), b.cuda(), w.cuda())
    for c, d in zip(cpu, gpu):
        torch.testing.assert_close(d.cpu(), c, rtol=1e-4, atol=1e-5)
