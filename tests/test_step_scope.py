"""Backbone.step_scope: forward passes of one step share a modality's projection."""
import pytest
import torch

from ckdlab.backbones import build_backbone
from ckdlab.modality import ModalityInputs
from tests.conftest import make_tiny_dataset


def count_projection_calls(model):
    """(modality, feature shape) of every projection computed (VBPR: its fused projection + content bias)."""
    calls = []
    if hasattr(model, "_fused_projection"):
        original = model._fused_projection

        def counted(m, feat):
            calls.append((m, tuple(feat.shape)))
            return original(m, feat)

        model._fused_projection = counted
        return calls
    for name, module in model.projection.items():
        module.register_forward_hook(lambda mod, args, out, name=name: calls.append((name, tuple(args[0].shape))))
    return calls


@pytest.mark.parametrize("backbone", ["VBPR", "DeepStyle"])
def test_channels_reuse_the_full_models_projections_inside_a_scope(backbone):
    data = make_tiny_dataset()
    model = build_backbone(backbone, data)
    inputs = ModalityInputs.from_dataset(data)
    calls = count_projection_calls(model)
    with model.step_scope():
        model(inputs)
        full_item_rows = [c for c in calls if c[1][0] == data.n_items]
        for m in inputs.names:
            model(inputs.only(m))
    # the channels projected only the (one-row) means; the full feature matrices once each
    assert [c for c in calls if c[1][0] == data.n_items] == full_item_rows
    assert len(full_item_rows) == len(inputs.names)
    calls.clear()
    model(inputs)
    model(inputs)  # outside a scope nothing is memoised
    assert len([c for c in calls if c[1][0] == data.n_items]) == 2 * len(inputs.names)


@pytest.mark.parametrize("backbone", ["VBPR", "DeepStyle"])
def test_scope_changes_neither_outputs_nor_gradients(backbone):
    data = make_tiny_dataset()
    inputs = ModalityInputs.from_dataset(data)

    def loss_and_grads(scoped: bool):
        torch.manual_seed(0)
        model = build_backbone(backbone, data)
        scope = model.step_scope() if scoped else torch.enable_grad()
        with scope:
            total = sum(r.square().sum() for x in [inputs] + [inputs.only(m) for m in inputs.names]
                        for r in model(x))
        total.backward()
        return total.detach(), [p.grad.clone() for p in model.parameters()]

    loss_a, grads_a = loss_and_grads(False)
    loss_b, grads_b = loss_and_grads(True)
    assert torch.equal(loss_a, loss_b)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)  # summation order only


def test_a_value_computed_without_grad_is_not_reused_with_grad():
    data = make_tiny_dataset()
    model = build_backbone("VBPR", data)
    inputs = ModalityInputs.from_dataset(data)
    with model.step_scope():
        with torch.no_grad():
            model(inputs)
        users, items = model(inputs)
    assert items.requires_grad
    items.sum().backward()
    assert all(model.projection[m].weight.grad is not None for m in inputs.names)


@pytest.mark.parametrize("backbone", ["VBPR", "DeepStyle"])
def test_a_ckd_step_projects_each_modality_of_the_batch_once(backbone):
    """CKD's channels score the batch with index tensors of their own: the rows the step's full pass
    gathered and projected are found by value; only the generic triples' items are projected anew."""
    from ckdlab.balance import Batch, backbone_step
    from ckdlab.balance.ckd import _channel_margins

    data = make_tiny_dataset()
    model = build_backbone(backbone, data)
    inputs = ModalityInputs.from_dataset(data)
    batch = Batch(torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5]), torch.tensor([6, 7, 8]))
    generic = Batch(torch.tensor([9, 10]), torch.tensor([11, 12]), torch.tensor([13, 14]))
    calls = count_projection_calls(model)
    with model.step_scope():
        backbone_step(model, inputs, batch, 1e-4)
        for m in inputs.names:
            ds, dg = _channel_margins(model, inputs.only(m), batch, generic)
    batch_rows = [c for c in calls if c[1][0] == 2 * len(batch.users)]
    generic_rows = [c for c in calls if c[1][0] == 2 * len(generic.users)]
    assert sorted(m for m, _ in batch_rows) == sorted(inputs.names)  # the full pass's, once per modality
    assert sorted(m for m, _ in generic_rows) == sorted(inputs.names)  # each channel its own modality
    # and the shared rows give the channel's own margins
    with torch.no_grad():
        for m in inputs.names:
            u, i = model(inputs.only(m))
            expected = (u[batch.users] * (i[batch.pos] - i[batch.neg])).sum(-1)
            with model.step_scope():
                backbone_step(model, inputs, batch, 1e-4)
                ds, dg = _channel_margins(model, inputs.only(m), batch, generic)
            torch.testing.assert_close(ds, expected, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(dg, (u[generic.users] * (i[generic.pos] - i[generic.neg])).sum(-1),
                                       rtol=1e-5, atol=1e-6)


def test_rows_are_found_by_value_only_when_asked_and_not_across_tables():
    data = make_tiny_dataset()
    model = build_backbone("VBPR", data)
    index = torch.tensor([1, 2, 3])
    with model.step_scope():
        first = model.gathered(model.user_id, index)
        assert model.gathered(model.user_id, torch.tensor([1, 2, 3])) is first      # equal values
        assert model.gathered(model.user_id, torch.tensor([1, 2, 4])) is not first  # other values
        assert model.gathered(model.item_id, torch.tensor([1, 2, 3])) is not first  # other table
        same_id = model.memoised(("k",), index, lambda: torch.zeros(1))
        assert model.memoised(("k",), torch.tensor([1, 2, 3]), lambda: torch.ones(1)) is not same_id
    assert torch.equal(first, model.user_id[index])


def test_triple_margins_value_and_gradient_equal_autograd_through_slices():
    from ckdlab.gather import triple_margins

    torch.manual_seed(0)
    u = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    items = torch.randn(10, 4, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(triple_margins, (u, items))
    weights = torch.randn(5, dtype=torch.float64)
    ours = (triple_margins(u, items) * weights).sum()
    grads = torch.autograd.grad(ours, (u, items))
    plain = ((u * (items[:5] - items[5:])).sum(-1) * weights).sum()
    expected = torch.autograd.grad(plain, (u, items))
    assert torch.allclose(ours, plain)
    for a, b in zip(grads, expected):
        assert torch.allclose(a, b)
    with pytest.raises(ValueError, match="need 10 item rows"):
        triple_margins(u, items[:9])


def test_squared_norm_equals_autograd_pow_to_the_last_bit():
    """The L2 penalty's sum of squares: the same float32 value and gradient as ``x.pow(2).sum()``
    (the custom backward ``x * 2g`` rounds exactly like autograd's ``(2x) * g``)."""
    from ckdlab.gather import squared_norm

    torch.manual_seed(0)
    x = torch.randn(300, 65)
    mine, theirs = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    scale = torch.tensor(0.37)  # an upstream gradient other than 1
    (squared_norm(mine) * scale).backward()
    (theirs.pow(2).sum() * scale).backward()
    assert torch.equal(squared_norm(x), x.pow(2).sum())
    assert torch.equal(mine.grad, theirs.grad)
    double = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(squared_norm, (double,))


def test_triple_margins_forward_equals_the_unchunked_product_sum_to_the_last_bit():
    """The forward sums a chunk of rows' products at a time (``gather.rows_per_chunk``): every
    chunk, the last partial one included, gives the numbers of ``(u * (i - j)).sum(-1)`` exactly."""
    from ckdlab.gather import rows_per_chunk, triple_margins

    torch.manual_seed(0)
    u = torch.randn(1, 193)
    n = 2 * rows_per_chunk(u) + 37
    u, items = torch.randn(n, 193), torch.randn(2 * n, 193) * 1e3
    assert torch.equal(triple_margins(u, items), (u * (items[:n] - items[n:])).sum(-1))


@pytest.mark.parametrize("chunk", [None, 1, 5, 512, 10_000])
def test_frozen_margins_equal_triple_margins_over_gathered_rows_to_the_last_bit(chunk):
    """A teacher's margins, gathered a chunk of triples at a time: the same floats as gathering
    every row first, for any chunk size (the last chunk partial or not)."""
    from ckdlab.gather import frozen_margins, rows, triple_margins

    torch.manual_seed(1)
    user_table, item_table = torch.randn(50, 193) * 3, torch.randn(40, 193)
    users, pos, neg = torch.randint(0, 50, (1203,)), torch.randint(0, 40, (1203,)), torch.randint(0, 40, (1203,))
    expected = triple_margins(rows(user_table, users), rows(item_table, torch.cat([pos, neg])))
    assert torch.equal(frozen_margins(user_table, item_table, users, pos, neg, chunk=chunk), expected)
    with pytest.raises(ValueError, match="one dtype"):
        frozen_margins(user_table.double(), item_table, users, pos, neg)
    with pytest.raises(ValueError, match="no gradient"):
        frozen_margins(user_table, item_table.clone().requires_grad_(True), users, pos, neg)
    with pytest.raises(ValueError, match="no gradient"):
        frozen_margins(user_table.requires_grad_(True), item_table, users, pos, neg)


def test_chunks_are_whole_tensors_off_the_cpu_and_strided_margins_are_not_chunked():
    """Off the CPU one chunk (a GPU's reductions depend on the shape); strided rows are summed
    unchunked, as a strided product is reduced in another order."""
    from ckdlab import gather

    assert gather.rows_per_chunk(torch.empty(100_000, 64, device="meta")) == 100_000
    assert gather.rows_per_chunk(torch.empty(100_000, 64)) == gather.CHUNK_BYTES // 256
    torch.manual_seed(2)
    n = 3 * gather.rows_per_chunk(torch.empty(1, 193)) + 1
    u = torch.randn(193, n).t()  # column-major rows
    items = torch.randn(193, 2 * n).t() * 1e3
    assert torch.equal(gather.triple_margins(u, items), (u * (items[:n] - items[n:])).sum(-1))


def test_l2_normalize_equals_f_normalize_and_does_not_depend_on_the_chunking(monkeypatch):
    """Over several chunks of rows (the last partial, a zero row, a row whose norm is clamped at
    eps): the value of ``F.normalize(x, dim=1)`` to the last bit, its autograd gradient within
    rounding, and the same floats as one chunk over the whole tensor; gradcheck in double."""
    from ckdlab import gather
    from ckdlab.backbones._layers import l2_normalize

    torch.manual_seed(0)
    x = torch.randn(3 * gather.rows_per_chunk(torch.empty(1, 64)) + 11, 64) * 5
    x[7] = 0.0
    x[8] = x[8] / x[8].norm() * 0.9e-12  # below eps: divided by eps, no radial term in the gradient
    upstream = torch.randn_like(x)

    def value_and_grad(normalize):
        leaf = x.clone().requires_grad_(True)
        y = normalize(leaf)
        (y * upstream).sum().backward()
        return y.detach(), leaf.grad

    y, grad = value_and_grad(l2_normalize)
    y_ref, grad_ref = value_and_grad(lambda t: torch.nn.functional.normalize(t, dim=1))
    assert torch.equal(y, y_ref)
    assert torch.equal(grad[8], grad_ref[8])  # clamped: g / eps, about 1e12, and nothing else
    others = torch.ones(len(x), dtype=torch.bool)
    others[8] = False
    assert torch.allclose(grad[others], grad_ref[others], rtol=1e-5, atol=1e-7)
    monkeypatch.setattr(gather, "CHUNK_BYTES", 1 << 40)  # the whole tensor in one chunk
    y_one, grad_one = value_and_grad(l2_normalize)
    assert torch.equal(y, y_one) and torch.equal(grad, grad_one)
    monkeypatch.setattr(gather, "CHUNK_BYTES", 2 * 3 * 8)  # two rows of 3 doubles per chunk
    double = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(l2_normalize, (double,))


@pytest.mark.parametrize("width", [64, 48, 193, 7])
def test_sigmoid_gate_equals_autograd_to_the_last_bit_across_chunks(width):
    """EgoGCN's gated messages ``sigmoid(z) * h``: value and both gradients the floats autograd
    gives through ``torch.sigmoid`` and ``*``, over several chunks (the last partial), for widths
    whose chunks do not end on a whole vector of floats (a chunked sigmoid fails these)."""
    from ckdlab import gather
    from ckdlab.backbones._layers import sigmoid_gate

    torch.manual_seed(0)
    n = 2 * gather.rows_per_chunk(torch.empty(1, width)) + 5
    z, h, upstream = torch.randn(n, width) * 4, torch.randn(n, width), torch.randn(n, width)

    def value_and_grads(gate):
        zl, hl = z.clone().requires_grad_(True), h.clone().requires_grad_(True)
        out = gate(zl, hl)
        (out * upstream).sum().backward()
        return out.detach(), zl.grad, hl.grad

    ours = value_and_grads(sigmoid_gate)
    autograd = value_and_grads(lambda a, b: torch.sigmoid(a) * b)
    for mine, theirs in zip(ours, autograd):
        assert torch.equal(mine, theirs)
    with pytest.raises(ValueError, match="one shape"):
        sigmoid_gate(z, h[:-1])
    only_h = h.clone().requires_grad_(True)  # z needs no gradient: only dh is computed
    (sigmoid_gate(z, only_h) * upstream).sum().backward()
    assert torch.equal(only_h.grad, autograd[2])


def test_add_all_adds_from_the_left_without_copying_the_first_term():
    from ckdlab.backbones._layers import add_all

    a, b, c = torch.full((2, 3), 1e8), torch.full((2, 3), -1e8), torch.ones(2, 3)
    assert add_all([a]) is a  # Python's sum would return 0 + a, a copy
    assert torch.equal(add_all(iter([a, b, c])), torch.ones(2, 3))  # from the right: 1e8 + (-1e8 + 1) = 0
    with pytest.raises(ValueError, match="at least one"):
        add_all([])
