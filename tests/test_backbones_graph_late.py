"""Graph late-fusion backbones: MMGCN and GRCN."""
from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

from ckdlab.backbones import build_backbone, grcn, mmgcn  # noqa: F401  (registration)
from ckdlab.backbones._layers import l2_normalize
from ckdlab.backbones.base import Backbone
from ckdlab.modality import ModalityInputs

from conftest import make_tiny_dataset

NAMES = ["MMGCN", "GRCN"]
# one configuration per backbone with its non-default options switched on
VARIANTS = [("MMGCN", {}), ("MMGCN", {"fusion": "concat", "n_layers": 3, "preference_dim": 32}),
            ("GRCN", {}), ("GRCN", {"weight_mode": "mean", "edge_norm": "none", "routing_rounds": 1})]


def _build(name, dataset, seed=0, **params):
    torch.manual_seed(seed)
    return build_backbone(name, dataset, **params)


def _triples(dataset, n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    train = torch.as_tensor(dataset.train)
    rows = train[torch.randint(len(train), (n,), generator=g)]
    neg = torch.randint(dataset.n_items, (n,), generator=g)
    return rows[:, 0], rows[:, 1], neg


def _bpr(model, reps, users, pos, neg):
    u, i = reps
    return -F.logsigmoid(Backbone.score_pairs(u, i, users, pos) - Backbone.score_pairs(u, i, users, neg)).mean()


def _scores(model, inputs):
    with torch.no_grad():
        u, i = model(inputs)
    return u @ i.T


@pytest.mark.parametrize("name,params", VARIANTS)
def test_forward_backward_reaches_every_parameter(name, params, tiny_dataset):
    model = _build(name, tiny_dataset, **params)
    inputs = ModalityInputs.from_dataset(tiny_dataset)
    reps = model(inputs)
    assert reps[0].shape[0] == tiny_dataset.n_users and reps[1].shape[0] == tiny_dataset.n_items
    assert reps[0].shape[1] == reps[1].shape[1]
    users, pos, neg = _triples(tiny_dataset)
    loss = _bpr(model, reps, users, pos, neg) + 1e-3 * model.regularization(*reps, users, pos, neg)
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: {pname} got no gradient"
        assert torch.isfinite(p.grad).all()
        assert p.grad.abs().sum() > 0, f"{name}: {pname} has an all-zero gradient"


@pytest.mark.parametrize("name", NAMES)
def test_user_preferences_and_id_embeddings_are_trained_parameters(name, tiny_dataset):
    model = _build(name, tiny_dataset)
    params = dict(model.named_parameters())
    assert "id_embedding" in params
    for m in tiny_dataset.modalities:
        own = {id(p) for p in model.modality_parameters(m)}
        prefs = [p for n, p in params.items() if "preference" in n and m in n]
        assert len(prefs) == 1 and id(prefs[0]) in own
        assert id(params["id_embedding"]) not in own
    # modality parameter sets are disjoint
    a, b = (set(map(id, model.modality_parameters(m))) for m in tiny_dataset.modalities)
    assert not a & b


@pytest.mark.parametrize("name", NAMES)
def test_one_optimizer_step_moves_preferences(name, tiny_dataset):
    model = _build(name, tiny_dataset)
    inputs = ModalityInputs.from_dataset(tiny_dataset)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    users, pos, neg = _triples(tiny_dataset)
    _bpr(model, model(inputs), users, pos, neg).backward()
    opt.step()
    for n, p in model.named_parameters():
        if "preference" in n or n == "id_embedding":
            assert not torch.equal(before[n], p.detach()), n


@pytest.mark.parametrize("name,params", VARIANTS)
def test_full_scores_match_pair_scores(name, params, tiny_dataset):
    model = _build(name, tiny_dataset, **params).eval()
    inputs = ModalityInputs.from_dataset(tiny_dataset)
    with torch.no_grad():
        u, i = model(inputs)
    full = u @ i.T
    g = torch.Generator().manual_seed(1)
    users = torch.randint(tiny_dataset.n_users, (50,), generator=g)
    items = torch.randint(tiny_dataset.n_items, (50,), generator=g)
    assert torch.allclose(full[users, items], model.score_pairs(u, i, users, items), atol=1e-5, rtol=1e-5)


def _perturbed(dataset, modality, scale=10.0, seed=3):
    """Features with ``modality`` changed row by row but with the same item mean."""
    feats = {m: torch.as_tensor(f) for m, f in dataset.features.items()}
    g = torch.Generator().manual_seed(seed)
    noise = scale * torch.randn(feats[modality].shape, generator=g)
    feats[modality] = feats[modality] + noise - noise.mean(dim=0, keepdim=True)
    return ModalityInputs.from_dataset(dataset), ModalityInputs(feats)


@pytest.mark.parametrize("name,params", VARIANTS)
@pytest.mark.parametrize("modality", ["image", "text"])
def test_ablated_modality_has_no_influence(name, params, modality, tiny_dataset):
    model = _build(name, tiny_dataset, **params).eval()
    base, changed = _perturbed(tiny_dataset, modality)
    assert torch.allclose(base[modality].mean(0), changed[modality].mean(0), atol=1e-5)
    # nothing ablated: the modality matters
    assert not torch.allclose(_scores(model, base), _scores(model, changed), atol=1e-3)
    # ablated: the individual rows of the modality do not matter (only the item mean does)
    s0, s1 = _scores(model, base.ablate(modality)), _scores(model, changed.ablate(modality))
    assert torch.allclose(s0, s1, atol=1e-5, rtol=1e-5)
    # ...and ablation itself changes the output (user preferences and item features are averaged)
    assert not torch.allclose(s0, _scores(model, base), atol=1e-3)


@pytest.mark.parametrize("name", NAMES)
def test_ablation_replaces_user_preference_by_its_mean(name, tiny_dataset):
    """Permuting the users' preference rows of an ablated modality changes nothing."""
    model = _build(name, tiny_dataset).eval()
    full = ModalityInputs.from_dataset(tiny_dataset)
    ablated, present = _scores(model, full.ablate("image")), _scores(model, full)
    pref = dict(model.named_parameters())[
        "branches.image.preference" if name == "MMGCN" else "preference.image"]
    with torch.no_grad():
        pref.copy_(pref[torch.randperm(pref.shape[0])])
    assert torch.allclose(ablated, _scores(model, full.ablate("image")), atol=1e-5, rtol=1e-5)
    # with the modality present the permutation matters
    assert not torch.allclose(present, _scores(model, full), atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_for_fixed_seed(name, tiny_dataset):
    inputs = ModalityInputs.from_dataset(tiny_dataset)
    a, b = _build(name, tiny_dataset, seed=5), _build(name, tiny_dataset, seed=5)
    for n, p in a.state_dict().items():
        assert torch.equal(p, b.state_dict()[n]), n
    assert torch.equal(_scores(a, inputs), _scores(b, inputs))
    c = _build(name, tiny_dataset, seed=6)
    assert not torch.equal(_scores(a, inputs), _scores(c, inputs))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dims", [{"image": 7}, {"image": 12, "text": 8, "audio": 5}])
def test_any_number_of_modalities(name, dims):
    ds = make_tiny_dataset(dims=dims, seed=2)
    model = _build(name, ds)
    inputs = ModalityInputs.from_dataset(ds)
    users, pos, neg = _triples(ds)
    reps = model(inputs)
    _bpr(model, reps, users, pos, neg).backward()
    assert all(p.grad is not None for p in model.parameters())
    for m in ds.modalities:
        assert model.modality_parameters(m)
        u, i = model(inputs.only(m))
        assert torch.isfinite(u).all() and torch.isfinite(i).all()
    u, i = model(inputs.ablate(*ds.modalities))  # every modality ablated: still a valid (ID) model
    assert torch.isfinite(u @ i.T).all()


@pytest.mark.parametrize("name", NAMES)
def test_graph_is_sparse_and_moves_with_module(name, tiny_dataset):
    model = _build(name, tiny_dataset)
    assert not any(t.dim() == 2 and t.shape == (tiny_dataset.n_users, tiny_dataset.n_items)
                   for t in model.buffers())
    # graph buffers are not saved (rebuilt from the dataset)
    assert set(model.state_dict()) == {n for n, _ in model.named_parameters()}
    model = model.to(torch.float64).to("cpu")  # .to() reaches the buffers without error
    assert all(b.device.type == "cpu" for b in model.buffers())


@pytest.mark.parametrize("name", NAMES)
def test_embedding_dim_is_the_size_parameter(name, tiny_dataset):
    model = _build(name, tiny_dataset, embedding_dim=16)
    u, i = model(ModalityInputs.from_dataset(tiny_dataset))
    assert model.embedding_dim == 16 and model.id_embedding.shape[1] == 16
    assert u.shape[1] == i.shape[1]


def test_l2_normalize_equals_f_normalize():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 5, generator=g, dtype=torch.float64)
    x[3] = 0.0  # an all-zero row: F.normalize keeps it at zero
    x[4] *= 1e-14  # a row below eps: divided by eps
    x.requires_grad_()
    go = torch.randn(12, 5, generator=g, dtype=torch.float64)
    ref, fast = F.normalize(x, dim=1), l2_normalize(x)
    torch.testing.assert_close(fast, ref)
    torch.testing.assert_close(torch.autograd.grad((fast * go).sum(), x)[0],
                               torch.autograd.grad((ref * go).sum(), x)[0])
    y = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(l2_normalize, (y,))
    # an expanded (stride-0) input, as an ablated preference
    row = torch.randn(1, 4, generator=g, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(torch.autograd.grad(l2_normalize(row.expand(5, 4)).pow(3).sum(), row)[0],
                               torch.autograd.grad(F.normalize(row.expand(5, 4), dim=1).pow(3).sum(), row)[0])


def test_grcn_edge_weights_are_pruned_and_row_normalised(tiny_dataset):
    model = _build("GRCN", tiny_dataset).eval()
    inputs = ModalityInputs.from_dataset(tiny_dataset)
    with torch.no_grad():
        model.confidence["text"][:5] = -1.0  # a negative confidence prunes these senders' text edges
        contents = [model._content(inputs, m) for m in model.modalities]
        prefs = [model._route(model.preference[m], c) for m, c in zip(model.modalities, contents)]
        w = model._edge_weights(prefs, contents)
        g = model.graph
        # reference: cosine of the two endpoints' modality vectors, per direction
        nodes = [torch.cat([p, c]) for p, c in zip(prefs, contents)]
        raw = torch.stack([(h[g.dst] * h[g.src]).sum(1) * model.confidence[m][g.src]
                           for m, h in zip(model.modalities, nodes)], 1).max(1).values.relu()
        sums = g.row_sum(raw)
        assert torch.allclose(w, raw / sums.clamp_min(1e-12)[g.dst], atol=1e-6)
    assert (w >= 0).all() and (w == 0).any()
    has = sums > 0
    assert torch.allclose(g.row_sum(w)[has], torch.ones(int(has.sum())), atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", NAMES)
def test_cuda_matches_cpu(name, tiny_dataset):
    model = _build(name, tiny_dataset).eval()
    inputs = ModalityInputs.from_dataset(tiny_dataset)
    cpu = _scores(model, inputs)
    gpu = _scores(model.to("cuda"), inputs.to("cuda")).cpu()
    assert torch.allclose(cpu, gpu, atol=1e-4, rtol=1e-4)
