"""The one Task/Update <-> protobuf-and-frames mapping (`fedcore/messages.py`), both directions,
for every download form and payload kind, without a network in between."""

from __future__ import annotations

import pytest
import torch

from fedcore.messages import (
    download_frames,
    download_layout,
    received_task,
    task_reply,
    update_from_upload,
    update_vectors,
    upload_header,
    upload_layout,
)
from fedcore.params import ModelLayout, ParamSpec
from fedcore.payloads import DenseDelta, SeedDelta, SparseDelta
from fedcore.records import Task, TransformSpec, Update
from fedcore.serialization import FrameError
from fedcore.wire import VectorAssembler, vector_frames

LAYOUT = ModelLayout(
    ParamSpec.from_named([("w", torch.zeros(4, 5)), ("b", torch.zeros(5))]),
    ParamSpec.from_named([("running", torch.zeros(3))]),
)
P = LAYOUT.params.numel


def _through_the_wire(task: Task, download: str, held=None):
    params, buffers = torch.randn(P), torch.randn(3)
    reply = task_reply(task, "t1", 0.0, download)
    assembler = VectorAssembler(download_layout(reply, LAYOUT))
    for parts in download_frames(task, params, buffers, download, 64):
        assembler.add(b"".join(parts))
    held = held or (torch.zeros(P), torch.zeros(3))
    received, got_params, got_buffers = received_task(reply, 7, assembler.result(), LAYOUT, held)
    return (params, buffers), received, got_params, got_buffers


def test_a_full_download_carries_the_task_and_its_model():
    transforms = (TransformSpec("topk", {"fraction": 0.2}),)
    extras = {"direction": torch.randn(P)}
    task = Task(3, 5, "miner", 4, {"lr": 0.1}, extras, seed=9, transforms=transforms)
    (params, buffers), received, got_params, got_buffers = _through_the_wire(task, "full")
    assert torch.equal(got_params, params) and torch.equal(got_buffers, buffers)
    assert (received.client_id, received.version, received.technique) == (7, 5, "miner")
    assert received.transforms == transforms and received.seed == 9
    assert torch.equal(received.extras["direction"], extras["direction"])


def test_a_masked_download_sends_the_mask_and_kept_values_only():
    mask = torch.zeros(P, dtype=torch.bool)
    mask[[0, 3, 17, 24]] = True
    task = Task(3, 5, extras={"mask": mask}, download="masked")
    (params, buffers), received, got_params, got_buffers = _through_the_wire(task, "masked")
    assert torch.equal(got_params, params * mask) and torch.equal(got_buffers, buffers)
    assert torch.equal(received.extras["mask"], mask) and received.download == "masked"


def test_a_held_version_is_not_sent_again():
    task = Task(3, 5)
    held = (torch.full((P,), 2.0), torch.ones(3))
    reply = task_reply(task, "t1", 0.0, "held")
    assert "params" not in download_layout(reply, LAYOUT)
    assert not list(download_frames(task, torch.zeros(P), torch.zeros(3), "held", 64))
    _, received, got_params, got_buffers = _through_the_wire(task, "held", held)
    assert got_params is held[0] and got_buffers is held[1] and received.download == "full"


def test_a_download_of_unknown_form_is_refused():
    reply = task_reply(Task(3, 5), "t1", 0.0, "full")
    reply.download = "everything"
    with pytest.raises(FrameError, match="not full, masked, none or held"):
        download_layout(reply, LAYOUT)


@pytest.mark.parametrize(
    "payload",
    [
        DenseDelta(torch.randn(P)),
        SparseDelta(torch.randn(3), indices=torch.tensor([1, 4, 20], dtype=torch.int32)),
        SparseDelta(torch.randn(2), mask=torch.tensor([3, 0, 0, 0], dtype=torch.uint8)),
        SeedDelta(torch.tensor([2, 7]), torch.randn(2)),
        None,
    ],
)
def test_every_payload_kind_round_trips(payload):
    update = Update(
        2, 5, 30, payload, None if payload is None else torch.randn(3), 4, 0.5, 0.6, {"a": 1.0}
    )
    header = upload_header(update, "client-2", "s", "t")
    expected = upload_layout(header, LAYOUT, max_count=4)
    assembler = VectorAssembler(expected)
    for name, vector in update_vectors(update).items():
        for parts in vector_frames({name: vector}, 64):
            assembler.add(b"".join(parts))
    back = update_from_upload(header, 2, assembler.result())
    if isinstance(back.payload, DenseDelta | SparseDelta):
        back.payload.check(P, torch.float32)
    assert (back.base_version, back.num_examples, back.metrics) == (5, 30, {"a": 1.0})
    if payload is None:
        assert back.payload is None
        return
    assert back.payload.kind == payload.kind
    for name, tensor in payload.tensors().items():
        assert torch.equal(back.payload.tensors()[name], tensor), name
    assert torch.equal(back.buffers, update.buffers)
