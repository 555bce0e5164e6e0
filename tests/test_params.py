"""Flat parameter vectors: layouts, round trips, and modules bound to flat storage."""

import pytest
import torch
from torch import nn

from fedcore.params import BoundModule, ModelLayout, ParamSpec, module_vectors


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 3))


def test_flatten_unflatten_round_trip():
    tensors = {"a": torch.randn(3, 4), "b": torch.randn(7), "c": torch.randn(2, 1, 5)}
    spec = ParamSpec.from_named(tensors.items())
    flat = spec.flatten(tensors)
    assert flat.shape == (12 + 7 + 10,)
    back = spec.unflatten(flat)
    for name, tensor in tensors.items():
        assert torch.equal(back[name], tensor)
    back["b"][0] = 42.0
    assert flat[12] == 42.0, "unflatten must return views"
    assert ParamSpec.from_json(spec.to_json()) == spec


def test_flatten_rejects_wrong_names_and_shapes():
    spec = ParamSpec.from_named({"a": torch.zeros(2, 2)}.items())
    with pytest.raises(ValueError, match="missing"):
        spec.flatten({"b": torch.zeros(2, 2)})
    with pytest.raises(ValueError, match="shape"):
        spec.flatten({"a": torch.zeros(4)})
    with pytest.raises(ValueError, match="does not match"):
        spec.unflatten(torch.zeros(5))


def test_layout_keeps_buffers_apart_from_parameters():
    net = _net()
    layout = ModelLayout.of(net)
    assert layout.params.numel == sum(p.numel() for p in net.parameters())
    assert set(layout.buffers.names) == {"1.running_mean", "1.running_var"}
    params, buffers = module_vectors(net, layout)
    assert torch.equal(params[:20], net[0].weight.detach().reshape(-1))
    assert buffers.numel() == 8


def test_bound_module_loads_and_accumulates_gradients_in_flat_storage():
    net = _net()
    bound = BoundModule(net)
    new = torch.arange(bound.params.numel(), dtype=torch.float32)
    bound.load(new)
    assert torch.equal(net[0].weight.detach().reshape(-1), new[:20])
    net.train()
    out = net(torch.randn(8, 5)).sum()
    out.backward()
    assert bound.grads.abs().sum() > 0
    assert net[0].weight.grad.data_ptr() == bound.grads.data_ptr()
    first = bound.grads.clone()
    net(torch.randn(8, 5)).sum().backward()
    assert not torch.equal(first, bound.grads), "second backward accumulates into the flat grads"
    assert bound.read_buffers().abs().sum() > 0


def test_fresh_gradients_are_the_layers_own_and_carried_into_the_flat_vector():
    """After `fresh_grads` a backward pass stores each layer's gradient separately (the flat
    vector is not touched); asking for `grads` copies them in and links the views again."""
    net = _net()
    bound = BoundModule(net)
    flat = bound.grads
    bound.fresh_grads()
    batch = torch.randn(8, 5)
    net(batch).sum().backward()
    layers = bound.layer_grads()
    assert all(grad.untyped_storage().data_ptr() != flat.data_ptr() for grad in layers)
    expected = torch.cat([grad.reshape(-1) for grad in layers])
    assert torch.equal(bound.grads, expected) and bound.grads.data_ptr() == flat.data_ptr()
    net(batch).sum().backward()
    assert torch.equal(bound.grads, 2 * expected), "linked again: the next backward accumulates"
