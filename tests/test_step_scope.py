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
