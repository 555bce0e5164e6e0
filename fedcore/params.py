"""Flat parameter vectors: one contiguous 1-D tensor per model, described by a ParamSpec.

Every update, aggregate and kernel in fedcore works on these vectors, so aggregation never loops
over layers in Python. A module can be *bound* to a flat vector: its parameters become views into
it, and loading a new global model is one copy.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class TensorSlot:
    """Where one named tensor lives inside a flat vector."""

    name: str
    shape: tuple[int, ...]
    offset: int

    @property
    def numel(self) -> int:
        """Number of elements of the tensor."""
        return math.prod(self.shape)


@dataclass(frozen=True)
class ParamSpec:
    """The layout of a flat vector: names, shapes, offsets and one dtype."""

    slots: tuple[TensorSlot, ...]
    dtype: torch.dtype = torch.float32

    @classmethod
    def from_named(
        cls, named: Iterable[tuple[str, torch.Tensor]], dtype: torch.dtype | None = None
    ) -> ParamSpec:
        """Lay out named tensors back to back in the order given."""
        slots: list[TensorSlot] = []
        offset = 0
        dtypes = set()
        for name, tensor in named:
            slots.append(TensorSlot(name, tuple(tensor.shape), offset))
            offset += tensor.numel()
            dtypes.add(tensor.dtype)
        if dtype is None:
            if len(dtypes) > 1:
                raise ValueError(f"tensors have mixed dtypes {sorted(map(str, dtypes))}")
            dtype = dtypes.pop() if dtypes else torch.float32
        return cls(tuple(slots), dtype)

    @property
    def numel(self) -> int:
        """Total number of elements of the flat vector."""
        return self.slots[-1].offset + self.slots[-1].numel if self.slots else 0

    @property
    def nbytes(self) -> int:
        """Size of the flat vector in bytes."""
        return self.numel * torch.empty((), dtype=self.dtype).element_size()

    @property
    def names(self) -> tuple[str, ...]:
        """Tensor names in layout order."""
        return tuple(slot.name for slot in self.slots)

    def empty(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """An uninitialised flat vector of this layout."""
        return torch.empty(self.numel, dtype=self.dtype, device=device)

    def flatten(self, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Copy named tensors into one new flat vector, checking names and shapes."""
        missing = set(self.names) - set(tensors)
        extra = set(tensors) - set(self.names)
        if missing or extra:
            raise ValueError(f"tensor names differ from spec: missing {missing}, extra {extra}")
        flat = self.empty()
        for slot in self.slots:
            tensor = tensors[slot.name]
            if tuple(tensor.shape) != slot.shape:
                raise ValueError(f"{slot.name}: shape {tuple(tensor.shape)} != spec {slot.shape}")
            flat[slot.offset : slot.offset + slot.numel].copy_(tensor.reshape(-1))
        return flat

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views of a flat vector as named tensors (no copy)."""
        self.check(flat)
        return {
            slot.name: flat[slot.offset : slot.offset + slot.numel].view(slot.shape)
            for slot in self.slots
        }

    def check(self, flat: torch.Tensor) -> None:
        """Raise ValueError unless `flat` is a 1-D vector of this layout."""
        if flat.dim() != 1 or flat.numel() != self.numel or flat.dtype != self.dtype:
            raise ValueError(
                f"flat vector {tuple(flat.shape)} {flat.dtype} does not match spec "
                f"({self.numel},) {self.dtype}"
            )

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready description (for run directories and the wire)."""
        return {
            "dtype": str(self.dtype).removeprefix("torch."),
            "tensors": [[s.name, list(s.shape)] for s in self.slots],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ParamSpec:
        """Inverse of to_json."""
        dtype = getattr(torch, str(data["dtype"]))
        named = [
            (str(n), torch.empty(tuple(int(d) for d in shape), device="meta"))
            for n, shape in data["tensors"]
        ]
        return cls.from_named(named, dtype=dtype)


@dataclass(frozen=True)
class ModelLayout:
    """The two flat layouts of a module: trainable parameters and buffers, kept apart."""

    params: ParamSpec
    buffers: ParamSpec

    @classmethod
    def of(cls, module: nn.Module) -> ModelLayout:
        """Layout of a module's trainable parameters and its floating-point buffers."""
        params = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        buffers = [(n, b) for n, b in module.named_buffers() if b.is_floating_point()]
        return cls(ParamSpec.from_named(params), ParamSpec.from_named(buffers, torch.float32))


def module_vectors(module: nn.Module, layout: ModelLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """Copies of a module's parameters and buffers as two flat vectors."""
    params = dict(module.named_parameters())
    buffers = dict(module.named_buffers())
    return (
        layout.params.flatten({n: params[n].detach() for n in layout.params.names}),
        layout.buffers.flatten({n: buffers[n].float() for n in layout.buffers.names}),
    )


class BoundModule:
    """A module whose parameters (and, on request, gradients) are views into flat vectors.

    Loading a global model is one `copy_`; FedProx-style terms act on `self.params` and
    `self.grads` as single tensors. Plain steps instead take each layer's gradient as the
    backward pass stored it (`fresh_grads`, `layer_grads`): accumulating into an existing
    gradient would cost a temporary as large as the largest layer.
    """

    def __init__(self, module: nn.Module, layout: ModelLayout | None = None) -> None:
        self.module = module
        self.layout = layout or ModelLayout.of(module)
        params, buffers = module_vectors(module, self.layout)
        self.params = params
        self.buffers = buffers
        self._named_params = dict(module.named_parameters())
        views = self.layout.params.unflatten(self.params)
        for name, view in views.items():
            self._named_params[name].data = view
        self._layers = [self._named_params[name] for name in views]
        #: Views of `params`, one per parameter, in layout order.
        self.param_views = list(views.values())
        self._grads: torch.Tensor | None = None
        self._grad_views: list[torch.Tensor] = []
        self._buffer_views = self.layout.buffers.unflatten(self.buffers)
        self._module_buffers = dict(module.named_buffers())

    @property
    def grads(self) -> torch.Tensor:
        """The flat gradient the parameters' `.grad` views point into; allocated on first use, so
        a module that only evaluates never holds a model-sized gradient. Gradients a backward
        pass stored elsewhere (after `fresh_grads`) are copied in (zeros where there were
        none), and the views linked again."""
        if self._grads is None:
            self._grads = torch.zeros_like(self.params)
            self._grad_views = list(self.layout.params.unflatten(self._grads).values())
        for parameter, view in zip(self._layers, self._grad_views, strict=True):
            grad = parameter.grad
            if grad is not None and grad.data_ptr() == view.data_ptr():
                continue
            if grad is None:
                view.zero_()
            else:
                view.copy_(grad)
            parameter.grad = view
        return self._grads

    def fresh_grads(self) -> None:
        """Drop the parameters' gradients: the next backward pass stores each layer's gradient
        as computed, instead of adding it into an existing one through a temporary."""
        for parameter in self._layers:
            parameter.grad = None

    def layer_grads(self) -> list[torch.Tensor]:
        """Each parameter's gradient in layout order (zeros for one the loss did not reach)."""
        return [
            torch.zeros_like(parameter) if parameter.grad is None else parameter.grad
            for parameter in self._layers
        ]

    def load(self, params: torch.Tensor, buffers: torch.Tensor | None = None) -> None:
        """Overwrite the module's weights (and buffers) from flat vectors."""
        self.params.copy_(params)
        if buffers is not None and buffers.numel():
            self.buffers.copy_(buffers)
            for name, view in self._buffer_views.items():
                self._module_buffers[name].copy_(view)

    def read_buffers(self) -> torch.Tensor:
        """The module's current buffers (e.g. BatchNorm statistics) as a flat vector."""
        for name, view in self._buffer_views.items():
            view.copy_(self._module_buffers[name])
        return self.buffers
