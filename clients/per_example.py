"""Sums of per-example gradients, each clipped to a norm bound: the core of a DP-SGD step.

Forward hooks on every trainable layer keep its inputs and outputs. One backward pass to the
layer outputs (no weight gradients) gives each layer's output gradients, from which Opacus's
norm samplers compute every example's gradient norm without forming per-example gradients
(ghost clipping); a second backward pass of the losses weighted by min(1, C / norm) then leaves
the clipped sum in `.grad`. With `ghost=False`, Opacus's grad samplers form the per-example
gradients and the clipped sum is taken from them (no second pass). A layer called several times
in one forward pass (Opacus's RNN layers call each cell's linear maps once per time step) has its
calls stacked as a sequence, whose ghost norm counts the sharing exactly.

`nn.GRU`, `nn.LSTM` and `nn.RNN` are swapped for Opacus's DPGRU, DPLSTM and DPRNN for the task,
holding the same parameter objects (the same names, shapes and gate order), and swapped back on
`close`. Opacus is imported when this is built, never on import (`clients/techniques/dpsgd.py`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch import nn

#: Per-layer rule: (layer, [inputs], output gradients) -> {parameter: per-example tensor}.
Sampler = Callable[[nn.Module, list[torch.Tensor], torch.Tensor], dict[nn.Parameter, torch.Tensor]]


def _dp_recurrent(layer: nn.Module) -> nn.Module | None:
    """Opacus's twin of a torch recurrent layer, holding the same parameter objects; None for
    any other layer."""
    from opacus.layers import DPGRU, DPLSTM, DPRNN

    settings: dict[str, Any] = {}
    if isinstance(layer, nn.LSTM):
        if layer.proj_size:
            raise ValueError("nn.LSTM with proj_size has no per-example gradient rule in Opacus")
        kind: type[nn.Module] = DPLSTM
    elif isinstance(layer, nn.GRU):
        kind = DPGRU
    elif isinstance(layer, nn.RNN):
        kind, settings = DPRNN, {"nonlinearity": layer.nonlinearity}
    else:
        return None
    twin = kind(
        layer.input_size,
        layer.hidden_size,
        num_layers=layer.num_layers,
        bias=layer.bias,
        batch_first=layer.batch_first,
        dropout=layer.dropout,
        bidirectional=layer.bidirectional,
        **settings,
    ).to(next(layer.parameters()).device)
    renames: dict[str, str] = twin.old_to_new  # type: ignore[assignment]
    for inner, name in renames.items():
        cell, matrix, component = inner.split(".")
        parameter = getattr(layer, name)
        setattr(getattr(getattr(twin, cell), matrix), component, parameter)
        twin.register_parameter(name, parameter)
    twin.train(layer.training)
    return twin


@contextmanager
def dp_layers(module: nn.Module) -> Iterator[nn.Module]:
    """`module` with its recurrent layers swapped for Opacus's DP twins, restored on exit."""
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    try:
        for parent in list(module.modules()):
            for name, child in list(parent.named_children()):
                twin = _dp_recurrent(child)
                if twin is not None:
                    setattr(parent, name, twin)
                    swapped.append((parent, name, child))
        yield module
    finally:
        for parent, name, child in reversed(swapped):
            setattr(parent, name, child)


def _samplers() -> tuple[dict[type, Sampler], dict[type, Sampler]]:
    """Opacus's per-example norm and gradient rules by layer type (a DP RNN cell's linear maps
    are linear layers: the linear norm rule holds for them)."""
    from opacus.grad_sample import GradSampleModule, GradSampleModuleFastGradientClipping
    from opacus.layers.dp_rnn import RNNLinear

    norms = dict(GradSampleModuleFastGradientClipping.NORM_SAMPLERS)
    norms[RNNLinear] = norms[nn.Linear]
    return norms, dict(GradSampleModule.GRAD_SAMPLERS)


def clipping_problem(module: nn.Module) -> str | None:
    """Why DP-SGD cannot clip `module`'s per-example gradients (a layer without a rule, or one
    that mixes examples, such as BatchNorm), or None."""
    from opacus.validators import ModuleValidator

    try:
        with dp_layers(module):
            problems = ModuleValidator.validate(module, strict=False)
            if problems:
                return str(problems[0])
            _trainable_layers(module, _samplers()[1])
    except ValueError as error:
        return str(error)
    return None


def _trainable_layers(module: nn.Module, grad_samplers: dict[type, Sampler]) -> list[nn.Module]:
    """The layers that hold trainable parameters directly, each with a per-example rule (a DP
    RNN's own parameters are its cells' under their torch names)."""
    from opacus.layers.param_rename import RenameParamsMixin

    layers = []
    for name, layer in module.named_modules():
        if isinstance(layer, RenameParamsMixin) or not any(
            p.requires_grad for p in layer.parameters(recurse=False)
        ):
            continue
        if type(layer) not in grad_samplers:
            raise ValueError(
                f"layer {name or 'the model'} ({type(layer).__name__}) has no per-example "
                "gradient rule in Opacus"
            )
        layers.append(layer)
    return layers


class ClippedGradients:
    """Turns a batch's per-example losses into the sum of their gradients, each clipped to
    `max_norm`, in the parameters' `.grad`; `close` removes the hooks and the swapped layers."""

    def __init__(self, module: nn.Module, max_norm: float, ghost: bool) -> None:
        self.max_norm = max_norm
        self.ghost = ghost
        self._norm_samplers, self._grad_samplers = _samplers()
        self._swapped = ExitStack()
        self._swapped.enter_context(dp_layers(module))
        try:
            layers = _trainable_layers(module, self._grad_samplers)
        except ValueError:
            self._swapped.close()
            raise
        self._calls: list[tuple[nn.Module, list[torch.Tensor], torch.Tensor]] = []
        self._hooks = [layer.register_forward_hook(self._keep) for layer in layers]

    def _keep(self, layer: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        """Keep a call's inputs and output (only when the pass builds a graph)."""
        if torch.is_grad_enabled():
            self._calls.append((layer, [x.detach() for x in inputs], output))

    def backward(self, losses: torch.Tensor) -> None:
        """Leave Σ_i min(1, C / ‖g_i‖) g_i in `.grad`, g_i the gradient of `losses[i]`."""
        calls, self._calls = self._calls, []
        if not len(losses):  # an empty Poisson batch: zero gradients, to which noise is added
            losses.sum().backward()
            return
        outputs = [output for _, _, output in calls]
        backprops = torch.autograd.grad(
            losses.sum(), outputs, retain_graph=self.ghost, allow_unused=True
        )
        grouped: dict[nn.Module, tuple[list[list[torch.Tensor]], list[torch.Tensor]]] = defaultdict(
            lambda: ([], [])
        )
        for (layer, inputs, output), backprop in zip(calls, backprops, strict=True):
            grouped[layer][0].append(inputs)
            grouped[layer][1].append(torch.zeros_like(output) if backprop is None else backprop)
        # Norms are taken of unit-scaled output gradients and summed in float64: an exploding
        # model's per-example gradients (1e19 and more) would overflow float32 when squared.
        squared = torch.zeros(len(losses), dtype=torch.float64, device=losses.device)
        samples: dict[nn.Parameter, tuple[torch.Tensor, torch.Tensor]] = {}  # for ghost=False
        for layer, (calls_inputs, grads) in grouped.items():
            activations, backprop = _as_one_call(calls_inputs, grads)
            size = backprop.abs().amax().clamp(min=torch.finfo(backprop.dtype).tiny)
            unit, size64 = backprop / size, size.double()
            sampler = self._norm_samplers.get(type(layer)) if self.ghost else None
            if sampler is not None:
                for norm in sampler(layer, activations, unit).values():
                    squared += (norm.double() * size64).square()
                continue
            rule = self._grad_samplers[type(layer)]
            for parameter, sample in rule(layer, activations, unit).items():
                squared += sample.flatten(1).square().sum(1).double() * size64.square()
                if not self.ghost:
                    samples[parameter] = (sample, size64)
        scale = (self.max_norm / (squared.sqrt() + 1e-6)).clamp(max=1.0)
        if self.ghost:
            (losses * scale.to(losses.dtype)).sum().backward()
        for parameter, (sample, size64) in samples.items():
            clipped = torch.einsum("n,n...->...", (scale * size64).to(sample.dtype), sample)
            parameter.grad = clipped if parameter.grad is None else parameter.grad + clipped

    def close(self) -> None:
        """Remove the hooks; put the torch recurrent layers back."""
        for hook in self._hooks:
            hook.remove()
        self._calls = []
        self._swapped.close()


def _as_one_call(
    inputs: list[list[torch.Tensor]], grads: list[torch.Tensor]
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """A layer's calls as one: several calls on [B, ...] inputs become one on [B, calls, ...]."""
    if len(grads) == 1:
        return inputs[0], grads[0]
    stacked = [torch.stack(column, dim=1) for column in zip(*inputs, strict=True)]
    return stacked, torch.stack(grads, dim=1)
