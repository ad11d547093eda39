"""Early-fusion backbones (EgoGCN, MGCN) and the block-wise kNN graph builder."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ckdlab.backbones import egogcn, mgcn  # noqa: F401  (registers the backbones)
from ckdlab.backbones import build_backbone
from ckdlab.graph import segment_softmax
from ckdlab.knn import knn_graph, topk_cosine
from ckdlab.modality import ModalityInputs

from conftest import make_tiny_dataset

NAMES = ["EgoGCN", "MGCN"]
THREE = {"image": 12, "text": 8, "audio": 5}


def _build(name, dataset, seed=0, **params):
    torch.manual_seed(seed)
    return build_backbone(name, dataset, **params)


def _inputs(dataset, features=None):
    feats = features if features is not None else dataset.features
    return ModalityInputs({m: torch.as_tensor(f, dtype=torch.float32) for m, f in feats.items()})


def _scores(model, inputs):
    with torch.no_grad():
        u, i = model(inputs)
    return u @ i.T


def _batch(dataset, n=16, seed=0):
    rng = np.random.default_rng(seed)
    rows = dataset.train[rng.choice(len(dataset.train), size=n, replace=False)]
    neg = rng.integers(0, dataset.n_items, size=n)
    return tuple(torch.as_tensor(a, dtype=torch.long) for a in (rows[:, 0], rows[:, 1], neg))


def _perturbed_keep_mean(dataset, modality, seed=1):
    rng = np.random.default_rng(seed)
    feats = dict(dataset.features)
    delta = rng.normal(scale=3.0, size=feats[modality].shape).astype(np.float32)
    delta -= delta.mean(axis=0, keepdims=True)
    feats[modality] = feats[modality] + delta
    return feats


# -- forward / backward --------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dims", [{"image": 12}, {"image": 12, "text": 8}, THREE], ids=["1mod", "2mod", "3mod"])
def test_forward_backward_every_parameter_gets_gradient(name, dims):
    ds = make_tiny_dataset(dims=dims)
    model = _build(name, ds)
    users, pos, neg = _batch(ds)
    u, i = model(_inputs(ds))
    assert u.shape[0] == ds.n_users and i.shape[0] == ds.n_items and u.shape[1] == i.shape[1]
    bpr = -F.logsigmoid(model.score_pairs(u, i, users, pos) - model.score_pairs(u, i, users, neg)).mean()
    aux = model.auxiliary_loss(u, i, users, pos, neg)
    assert aux.dim() == 0 and torch.isfinite(aux)
    if name == "MGCN":
        assert aux.item() > 0
    loss = bpr + aux + 1e-4 * model.regularization(u, i, users, pos, neg)
    loss.backward()
    # MGCN with one modality: common part == the modality part, so the specific part is
    # zero and the attention is softmax over one entry: those parameters are inert
    inert = ("prefer_gate.", "query_common.") if name == "MGCN" and len(dims) == 1 else ()
    for pname, p in model.named_parameters():
        if pname.startswith(inert):
            continue
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"{name}: parameter {pname} got no gradient"


@pytest.mark.parametrize("name", NAMES)
def test_full_scores_equal_pairwise_scores(name, tiny_dataset):
    model = _build(name, tiny_dataset)
    with torch.no_grad():
        u, i = model(_inputs(tiny_dataset))
    full = u @ i.T
    g = torch.Generator().manual_seed(0)
    users = torch.randint(0, tiny_dataset.n_users, (200,), generator=g)
    items = torch.randint(0, tiny_dataset.n_items, (200,), generator=g)
    torch.testing.assert_close(model.score_pairs(u, i, users, items), full[users, items], rtol=1e-5, atol=1e-6)


# -- ablation --------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dims", [{"image": 12, "text": 8}, THREE], ids=["2mod", "3mod"])
def test_ablated_modality_does_not_depend_on_its_features(name, dims):
    ds = make_tiny_dataset(dims=dims)
    model = _build(name, ds).eval()
    base = _inputs(ds)
    for m in ds.modalities:
        pert = _inputs(ds, _perturbed_keep_mean(ds, m))
        # ablated: only the item mean of m's features matters
        torch.testing.assert_close(_scores(model, pert.ablate(m)), _scores(model, base.ablate(m)), rtol=1e-5, atol=1e-5)
        # uni-modal channels of the other modalities ignore m as well
        for other in ds.modalities:
            if other != m:
                torch.testing.assert_close(_scores(model, pert.only(other)), _scores(model, base.only(other)),
                                           rtol=1e-5, atol=1e-5)
        # not ablated: m's features change the scores
        assert (_scores(model, pert) - _scores(model, base)).abs().max() > 1e-3
        # ablating m itself changes the scores (its user side and items are averaged)
        assert (_scores(model, base.ablate(m)) - _scores(model, base)).abs().max() > 1e-4


@pytest.mark.parametrize("name", NAMES)
def test_ablation_gives_mean_user_preference(name, tiny_dataset):
    """With every modality ablated, the modality side of all users is the same vector."""
    model = _build(name, tiny_dataset).eval()
    x = _inputs(tiny_dataset).ablate(*tiny_dataset.modalities)
    with torch.no_grad():
        if name == "EgoGCN":
            h = model.node_inputs(x)
            for m in tiny_dataset.modalities:
                users = h[m][: tiny_dataset.n_users]
                torch.testing.assert_close(users, users[:1].expand_as(users))
        else:
            for m in tiny_dataset.modalities:
                users, _ = model.modality_view(x, m)
                torch.testing.assert_close(users, users[:1].expand_as(users))


def test_mgcn_ablated_item_view_is_mean_of_purified_features(tiny_dataset):
    model = _build("MGCN", tiny_dataset, n_mm_layers=2).eval()
    x = _inputs(tiny_dataset)
    n = tiny_dataset.n_items
    with torch.no_grad():
        for m in tiny_dataset.modalities:
            xa = x.ablate(m)
            purified = model.purified(xa, m)
            users, items = model.modality_view(xa, m)
            mean = purified.mean(dim=0, keepdim=True).expand_as(purified)
            torch.testing.assert_close(items, mean)
            # what the uniform graph (every item linked to every item, weight 1/n) gives
            uniform = torch.full((n, n), 1.0 / n)
            torch.testing.assert_close(items, uniform @ (uniform @ purified), rtol=1e-5, atol=1e-6)
            # user part: mean over users of the aggregated item part
            agg = model.user_item(items)
            torch.testing.assert_close(users, agg.mean(dim=0, keepdim=True).expand_as(agg))
            # not ablated: the kNN graph propagates (the view differs from the mean)
            _, items_real = model.modality_view(x, m)
            assert (items_real - items_real.mean(dim=0, keepdim=True)).abs().max() > 1e-4


# -- parameters, determinism, copies ---------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_modality_parameters_split(name):
    ds = make_tiny_dataset(dims=THREE)
    model = _build(name, ds)
    all_ids = {id(p) for p in model.parameters()}
    seen: set[int] = set()
    for m in ds.modalities:
        ids = [id(p) for p in model.modality_parameters(m)]
        assert ids and len(ids) == len(set(ids))
        assert set(ids) <= all_ids
        assert not (set(ids) & seen), f"{name}: parameters shared between modalities"
        seen |= set(ids)
    shared = all_ids - seen
    id_emb = model.id_embedding if name == "EgoGCN" else model.item_id_embedding
    assert id(id_emb) in shared
    with pytest.raises(KeyError):
        model.modality_parameters("nope")


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_for_fixed_seed(name, tiny_dataset):
    a = _scores(_build(name, tiny_dataset, seed=3), _inputs(tiny_dataset))
    b = _scores(_build(name, tiny_dataset, seed=3), _inputs(tiny_dataset))
    c = _scores(_build(name, tiny_dataset, seed=4), _inputs(tiny_dataset))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("name", NAMES)
def test_deepcopy_after_training_forward_and_no_features_kept(name, tiny_dataset):
    model = _build(name, tiny_dataset)
    users, pos, neg = _batch(tiny_dataset)
    u, i = model(_inputs(tiny_dataset))
    clone = copy.deepcopy(model)  # e.g. keeping the best checkpoint in memory
    torch.testing.assert_close(_scores(clone, _inputs(tiny_dataset)), _scores(model, _inputs(tiny_dataset)))
    model.auxiliary_loss(u, i, users, pos, neg)
    # no feature matrix is stored in the module
    sizes = {tuple(f.shape) for f in tiny_dataset.features.values()}
    for t in list(model.parameters()) + list(model.buffers()):
        assert tuple(t.shape) not in sizes
    assert not any("feat" in k for k in model.state_dict())


def test_mgcn_auxiliary_loss_needs_its_own_forward(tiny_dataset):
    model = _build("MGCN", tiny_dataset)
    users, pos, neg = _batch(tiny_dataset)
    u, i = model(_inputs(tiny_dataset))
    with pytest.raises(RuntimeError, match="forward"):
        model.auxiliary_loss(u.clone(), i, users, pos, neg)
    zero = _build("MGCN", tiny_dataset, cl_weight=0.0)
    u0, i0 = zero(_inputs(tiny_dataset))
    assert zero.auxiliary_loss(u0, i0, users, pos, neg).item() == 0.0


@pytest.mark.parametrize("name", NAMES)
def test_embedding_dim_is_the_size_parameter(name, tiny_dataset):
    model = _build(name, tiny_dataset, embedding_dim=16)
    assert model.embedding_dim == 16
    u, i = model(_inputs(tiny_dataset))
    parts = 1 + len(tiny_dataset.modalities) if name == "EgoGCN" else 1
    assert u.shape[1] == i.shape[1] == 16 * parts
    with pytest.raises(TypeError, match="embedding_size"):
        _build(name, tiny_dataset, embedding_size=16)


def _info_nce_reference(view1, view2, t):
    v1, v2 = F.normalize(view1, dim=1), F.normalize(view2, dim=1)
    logits = v1 @ v2.T / t
    return (torch.logsumexp(logits, dim=1) - logits.diagonal()).mean()


def test_mgcn_info_nce_with_repeated_rows_equals_gathered_batch():
    g = torch.Generator().manual_seed(0)
    side = torch.randn(40, 6, generator=g, dtype=torch.float64, requires_grad=True)
    content = torch.randn(40, 6, generator=g, dtype=torch.float64, requires_grad=True)
    index = torch.randint(0, 40, (70,), generator=g)  # repeats, as in a BPR batch
    ref = _info_nce_reference(side[index], content[index], 0.2)
    fast = mgcn.info_nce(side, content, 0.2, index)
    torch.testing.assert_close(fast, ref)
    torch.testing.assert_close(mgcn.info_nce(side[index], content[index], 0.2), ref)
    torch.testing.assert_close(torch.autograd.grad(fast, (side, content)), torch.autograd.grad(ref, (side, content)))
    assert torch.autograd.gradcheck(lambda a, b: mgcn.info_nce(a, b, 0.3, index[:25]), (side, content))


def test_egogcn_layers_have_their_own_parameters(tiny_dataset):
    model = _build("EgoGCN", tiny_dataset, n_layers=3)
    ids = [{id(p) for p in layer.parameters()} for layer in model.layers]
    assert len(ids) == 3 and all(ids)
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert model(_inputs(tiny_dataset))[0].shape[1] == 64 * 3


def _naive_modulation(layer, h, edges):
    """The layer written edge by edge with explicit (E, M, D) messages (the definition)."""
    out = {}
    for m in layer.modalities:
        recv = h[m][edges.dst]
        cands = []
        for m2 in layer.modalities:
            c = h[m2] if m2 == m else torch.sigmoid(layer.gates[egogcn._gate_key(m, m2)](h[m2])) * h[m2]
            cands.append(c[edges.src])
        cand = torch.stack(cands, dim=1)
        beta = torch.softmax((cand * recv[:, None, :]).sum(-1), dim=1)
        msg = (beta[:, :, None] * cand).sum(1)
        alpha = segment_softmax((recv * msg).sum(-1), edges.dst, edges.n_dst)
        agg = torch.zeros_like(h[m]).index_add(0, edges.dst, alpha[:, None] * msg)
        out[m] = F.normalize(h[m] + agg, dim=1)
    return out


def test_edge_modulation_layer_equals_edgewise_definition():
    ds = make_tiny_dataset(dims=THREE)
    model = _build("EgoGCN", ds)
    h = model.node_inputs(_inputs(ds))
    fast = model.layers[0](h, model.edges)
    naive = _naive_modulation(model.layers[0], h, model.edges)
    for m in ds.modalities:
        torch.testing.assert_close(fast[m], naive[m], rtol=1e-5, atol=1e-6)
    params = [*model.preference.parameters(), *model.projection.parameters(), *model.layers[0].parameters()]
    g_fast = torch.autograd.grad(sum((v * v.detach().roll(1, 0)).sum() for v in fast.values()), params,
                                 retain_graph=True)
    g_naive = torch.autograd.grad(sum((v * v.detach().roll(1, 0)).sum() for v in naive.values()), params)
    for a, b in zip(g_fast, g_naive):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


# -- kNN builder ---------------------------------------------------------------------
def _dense_knn(x: torch.Tensor, k: int):
    xn = F.normalize(x, dim=1)
    return torch.topk(xn @ xn.T, k, dim=1)


@pytest.mark.parametrize("block_size", [1, 7, 50, None])
def test_topk_cosine_blockwise_equals_dense(block_size):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 9, generator=g)
    x[3] = 0.0  # an all-zero row: similarity 0 with everything
    v, i = topk_cosine(x, k=6, block_size=block_size)
    dv, di = _dense_knn(x, 6)
    torch.testing.assert_close(v, dv, rtol=1e-5, atol=1e-6)
    rows = [r for r in range(50) if r != 3]  # row 3 is all ties
    assert all(set(i[r].tolist()) == set(di[r].tolist()) for r in rows)
    assert all(i[r, 0].item() == r for r in rows)  # itself first


@pytest.mark.parametrize("normalization", ["sym", "rw", "none"])
def test_knn_graph_equals_dense_construction(normalization):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6)).astype(np.float32) + 1.0  # mostly positive similarities
    k = 5
    graph = knn_graph(x, k=k, normalization=normalization, block_size=9)
    assert graph.is_sparse and graph.shape == (40, 40) and graph._nnz() == 40 * k
    dv, di = _dense_knn(torch.as_tensor(x), k)
    dense = torch.zeros(40, 40).scatter_(1, di, dv.clamp_min(0))
    deg = dense.sum(dim=1)
    if normalization == "sym":
        expected = deg.rsqrt()[:, None] * dense * deg.rsqrt()[None, :]
    elif normalization == "rw":
        expected = dense / deg[:, None]
    else:
        expected = dense
    torch.testing.assert_close(graph.to_dense(), expected, rtol=1e-5, atol=1e-6)


def test_knn_graph_small_catalogue_and_errors():
    x = np.eye(3, dtype=np.float32)
    g = knn_graph(x, k=10)  # k larger than n is clipped
    assert g._nnz() == 9
    with pytest.raises(ValueError):
        knn_graph(x, k=2, normalization="bogus")
    with pytest.raises(ValueError):
        topk_cosine(np.zeros(5, dtype=np.float32), k=2)


# -- devices ---------------------------------------------------------------------------
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", NAMES)
def test_cuda_matches_cpu(name, tiny_dataset):
    model = _build(name, tiny_dataset)
    cpu = _scores(model, _inputs(tiny_dataset))
    gpu_model = model.to("cuda")
    x = _inputs(tiny_dataset).to("cuda")
    users, pos, neg = (t.cuda() for t in _batch(tiny_dataset))
    u, i = gpu_model(x)
    (u[users] * i[pos]).sum().add(gpu_model.auxiliary_loss(u, i, users, pos, neg)).backward()
    torch.testing.assert_close(_scores(gpu_model, x).cpu(), cpu, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(_scores(gpu_model, x.ablate("image")).cpu(),
                               _scores(model.cpu(), _inputs(tiny_dataset).ablate("image")), rtol=1e-4, atol=1e-4)
