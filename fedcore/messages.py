"""Task and Update to and from the coordinator's protobuf messages and tensor frames: the one
mapping both `fedcore server` and `fedcore client` use.

A task travels as a `TaskReply` (control fields) plus a download stream of frames: the model as
the task's `download` says, then the extras. An update travels as an `UploadHeader` (payload kind,
entry count, sparse encoding, metrics) plus frames of the payload's tensors and the buffers. The
receiving side derives what frames to expect from the layout it already knows and the bounded
count in the header, never from sizes a frame claims.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping

import numpy as np
import torch

from fedcore.params import ModelLayout
from fedcore.payloads import PAYLOAD_KINDS, payload_from_tensors
from fedcore.proto import coordinator_pb2 as pb
from fedcore.records import MASK, Task, TransformSpec, Update
from fedcore.serialization import DTYPE_NAMES, DTYPES, FrameError, FrameParts
from fedcore.wire import Expected, vector_frames

#: Metrics an upload header may carry at most, and the longest name each may have.
MAX_METRICS = 64
MAX_METRIC_NAME = 64
#: Download stream names of a masked model's parts.
MASKED_VALUES = "params/masked"
HELD = "held"


def task_reply(task: Task, task_id: str, deadline_seconds: float, download: str) -> pb.TaskReply:
    """The TaskReply announcing `task`; `download` is the task's, or "held" when the client
    already holds the task's model. A masked download announces its kept values' count as the
    extra `params/masked`."""
    specs = [
        pb.TensorSpec(name=name, dtype=DTYPE_NAMES[tensor.dtype], numel=tensor.numel())
        for name, tensor in task.extras.items()
    ]
    if download == "masked":
        kept = int(task.extras[MASK].sum())
        specs.append(pb.TensorSpec(name=MASKED_VALUES, dtype="float32", numel=kept))
    return pb.TaskReply(
        status=pb.TaskReply.TASK,
        task_id=task_id,
        version=task.version,
        kind=task.technique,
        local_steps=task.local_steps,
        hyper=task.hyper,
        seed=task.seed,
        deadline_seconds=deadline_seconds,
        extras=specs,
        transforms=[pb.Transform(name=t.name, options=t.options) for t in task.transforms],
        download=download,
    )


def download_frames(
    task: Task,
    params: torch.Tensor,
    buffers: torch.Tensor,
    download: str,
    chunk_bytes: int,
) -> Iterator[FrameParts]:
    """The frames of a task's download: the model as `download` says, then the extras."""
    if download == "full":
        yield from vector_frames({"params": params, "buffers": buffers}, chunk_bytes)
    elif download == "masked":
        mask = task.extras[MASK].reshape(-1).to(torch.bool)
        yield from vector_frames(
            {MASK: pack_bits(mask), MASKED_VALUES: params[mask], "buffers": buffers}, chunk_bytes
        )
    extras = {f"extra/{n}": t.reshape(-1) for n, t in task.extras.items() if n != MASK}
    yield from vector_frames(extras, chunk_bytes)


def download_layout(reply: pb.TaskReply, layout: ModelLayout) -> dict[str, Expected]:
    """The vectors a task's download stream must hold, from the reply and the model layout."""
    expected: dict[str, Expected] = {}
    if reply.download == "full":
        expected["params"] = (layout.params.numel, layout.params.dtype)
        expected["buffers"] = (layout.buffers.numel, layout.buffers.dtype)
    elif reply.download == "masked":
        expected[MASK] = (math.ceil(layout.params.numel / 8), torch.uint8)
        expected["buffers"] = (layout.buffers.numel, layout.buffers.dtype)
    elif reply.download not in ("none", HELD):
        raise FrameError(f"task download {reply.download!r} is not full, masked, none or held")
    for spec in reply.extras:
        if spec.dtype not in DTYPES:
            raise FrameError(f"task extra {spec.name!r} has unknown dtype {spec.dtype!r}")
        if spec.name == MASKED_VALUES:
            if reply.download != "masked" or spec.numel > layout.params.numel:
                raise FrameError(
                    f"{MASKED_VALUES}: {spec.numel} values for a {reply.download} download"
                )
            expected[MASKED_VALUES] = (spec.numel, layout.params.dtype)
        elif spec.name != MASK:
            expected[f"extra/{spec.name}"] = (spec.numel, DTYPES[spec.dtype])
    return expected


def received_task(
    reply: pb.TaskReply,
    client_number: int,
    vectors: Mapping[str, torch.Tensor],
    layout: ModelLayout,
    held: tuple[torch.Tensor, torch.Tensor],
) -> tuple[Task, torch.Tensor, torch.Tensor]:
    """The Task a TaskReply and its download describe, and its starting (params, buffers): as
    downloaded, rebuilt from a masked download (zero outside the mask), or the `held` model."""
    extras = {
        s.name: vectors[f"extra/{s.name}"] for s in reply.extras if f"extra/{s.name}" in vectors
    }
    params, buffers = held
    if reply.download == "full":
        params, buffers = vectors["params"], vectors["buffers"]
    elif reply.download == "masked":
        mask = unpack_bits(vectors[MASK], layout.params.numel)
        if int(mask.sum()) != vectors[MASKED_VALUES].numel():
            raise FrameError("masked download: the mask and the kept values differ in count")
        params = torch.zeros(layout.params.numel, dtype=layout.params.dtype)
        params[mask] = vectors[MASKED_VALUES]
        buffers, extras[MASK] = vectors["buffers"], mask
    return task_from_reply(reply, client_number, extras), params, buffers


def task_from_reply(
    reply: pb.TaskReply, client_number: int, extras: Mapping[str, torch.Tensor]
) -> Task:
    """The Task a TaskReply describes, with its downloaded extras."""
    return Task(
        client_id=client_number,
        version=reply.version,
        technique=reply.kind,
        local_steps=reply.local_steps,
        hyper=dict(reply.hyper),
        extras=dict(extras),
        seed=reply.seed,
        transforms=tuple(TransformSpec(t.name, dict(t.options)) for t in reply.transforms),
        download="full" if reply.download == HELD else reply.download,  # type: ignore[arg-type]
    )


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """A bool vector as little-endian bits packed in uint8."""
    return torch.from_numpy(np.packbits(mask.numpy().astype(np.uint8), bitorder="little"))


def unpack_bits(packed: torch.Tensor, numel: int) -> torch.Tensor:
    """The bool vector of `numel` entries that `pack_bits` packed."""
    bits = np.unpackbits(packed.numpy(), count=numel, bitorder="little")
    return torch.from_numpy(bits.astype(bool))


def upload_header(update: Update, client_id: str, session: str, task_id: str) -> pb.UploadHeader:
    """The header of an update's upload."""
    payload = update.payload
    tensors = {} if payload is None else payload.tensors()
    return pb.UploadHeader(
        client_id=client_id,
        session=session,
        task_id=task_id,
        base_version=update.base_version,
        num_examples=update.num_examples,
        local_steps=update.local_steps,
        compute_seconds=update.compute_seconds,
        wall_seconds=update.wall_seconds,
        metrics=update.metrics,
        payload="none" if payload is None else payload.kind,
        count=0 if payload is None else payload.count,
        encoding="mask" if MASK in tensors else "indices" if "indices" in tensors else "",
    )


def update_vectors(update: Update) -> dict[str, torch.Tensor]:
    """The vectors an update's upload streams: its payload's tensors, then the buffers."""
    if update.payload is None:
        return {}
    buffers = update.buffers if update.buffers is not None else torch.zeros(0)
    return {**update.payload.tensors(), "buffers": buffers}


def upload_layout(
    header: pb.UploadHeader, layout: ModelLayout, max_count: int
) -> dict[str, Expected]:
    """The vectors an upload must hold, from the header's payload kind and count (at most
    `max_count` seed entries, at most the model's size for the others); FrameError names a
    header that cannot be right."""
    numel = layout.params.numel
    kind, count = header.payload, header.count
    if kind not in (*PAYLOAD_KINDS, "none"):
        raise FrameError(f"unknown payload type {kind!r}; known: {[*PAYLOAD_KINDS, 'none']}")
    if len(header.metrics) > MAX_METRICS:
        raise FrameError(f"{len(header.metrics)} metrics, at most {MAX_METRICS}")
    if any(len(name) > MAX_METRIC_NAME for name in header.metrics):
        raise FrameError(f"a metric name is longer than {MAX_METRIC_NAME} characters")
    bound = max_count if kind == "seeds" else numel
    if count > bound:
        raise FrameError(f"header count {count} above the bound {bound} for a {kind} payload")
    if kind == "none":
        return {}
    buffers = (layout.buffers.numel, layout.buffers.dtype)
    indices = (count, (torch.int64, torch.int32))
    if kind == "dense":
        if count != numel:
            raise FrameError(f"length mismatch: dense count {count}, the model has {numel}")
        return {"delta": (numel, layout.params.dtype), "buffers": buffers}
    if kind == "seeds":
        return {"seeds": indices, "scalars": (count, torch.float32), "buffers": buffers}
    values = (count, layout.params.dtype)
    if header.encoding == "indices":
        return {"indices": indices, "values": values, "buffers": buffers}
    if header.encoding == "mask":
        return {MASK: (math.ceil(numel / 8), torch.uint8), "values": values, "buffers": buffers}
    raise FrameError(f"sparse encoding {header.encoding!r} is not indices or mask")


def update_from_upload(
    header: pb.UploadHeader, client_number: int, vectors: Mapping[str, torch.Tensor]
) -> Update:
    """The Update an upload carried (its payload still to be validated against the task)."""
    tensors = {k: v for k, v in vectors.items() if k != "buffers"}
    return Update(
        client_id=client_number,
        base_version=header.base_version,
        num_examples=header.num_examples,
        payload=None if header.payload == "none" else payload_from_tensors(header.payload, tensors),
        buffers=vectors.get("buffers"),
        local_steps=header.local_steps,
        compute_seconds=header.compute_seconds,
        wall_seconds=header.wall_seconds,
        metrics=dict(header.metrics),
    )
