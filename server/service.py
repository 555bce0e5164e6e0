"""The gRPC face of the coordinator: authenticates every call, then feeds events in.

Every handler is a coroutine on the server's one asyncio loop, as are the timers and the
liveness watch, so the coordinator and the strategy run single-threaded exactly as in
simulation. Tasks and updates cross the wire through `fedcore/messages.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import grpc
import grpc.aio

from fedcore.bounded import capped
from fedcore.certs import peer_client_id
from fedcore.memory import release_file_pages
from fedcore.messages import (
    HELD,
    download_frames,
    task_reply,
    update_from_upload,
    upload_layout,
)
from fedcore.proto import coordinator_pb2 as pb
from fedcore.proto import coordinator_pb2_grpc as pb_grpc
from fedcore.records import Task
from fedcore.rpc import DOWNLOAD_FRAME_FIELD, frame_message
from fedcore.serialization import DEFAULT_CHUNK_BYTES, FrameError
from fedcore.server.coordinator import Coordinator
from fedcore.server.registry import ClientSlot, Parked, Registry
from fedcore.wire import VectorAssembler

MAX_CHUNK_BYTES = DEFAULT_CHUNK_BYTES
#: Library versions a joining client's profile may list (each name and version capped).
MAX_LIBRARIES = 32
#: Uploads and downloads one client certificate may have open at once (an honest client has 1).
MAX_STREAMS_PER_CLIENT = 4


class Refusal(Exception):
    """An RPC refused for a reason the caller must see, with its gRPC status."""

    def __init__(self, code: grpc.StatusCode, reason: str, routine: bool = False) -> None:
        """`routine`: expected in normal operation (a stale session), not worth a ledger entry."""
        super().__init__(reason)
        self.code = code
        self.routine = routine


class CoordinatorService(pb_grpc.CoordinatorServicer):
    """The coordinator service's RPCs over a registry of enrolled clients."""

    def __init__(
        self,
        coordinator: Coordinator,
        registry: Registry,
        now: Callable[[], float],
        heartbeat_seconds: float,
        spool_dir: Path | None = None,
        spool_bytes: int = 0,
        upload_timeout: float = 300.0,
        memory_uploads: int = 0,
    ) -> None:
        """Uploads with vectors of at least `spool_bytes` go to `spool_dir`, except while fewer
        than `memory_uploads` uploads are being received in memory (the common case of one
        upload at a time then never touches the disk)."""
        self.coordinator = coordinator
        self.registry = registry
        self.now = now
        self.spool_dir = spool_dir
        self.spool_bytes = spool_bytes
        self.memory_uploads = memory_uploads
        self._in_memory = 0
        self.upload_timeout = upload_timeout
        self._streams: dict[str, int] = {}
        self.heartbeat_seconds = heartbeat_seconds
        self.bytes_down = 0
        self.bytes_up = 0
        layout = coordinator.layout
        self.spec_json = json.dumps(
            {"params": layout.params.to_json(), "buffers": layout.buffers.to_json()}
        )

    # -- authentication ------------------------------------------------------------------------
    def _identify(
        self, context: grpc.aio.ServicerContext, claimed: str, session: str | None
    ) -> ClientSlot:
        try:
            identity = peer_client_id(context.auth_context())
        except Exception:
            raise Refusal(
                grpc.StatusCode.UNAUTHENTICATED, "no client certificate identity"
            ) from None
        numbers = self.registry.numbers
        if identity not in numbers:
            raise Refusal(grpc.StatusCode.PERMISSION_DENIED, f"client {identity!r} is not enrolled")
        if identity in self.registry.revoked:
            raise Refusal(grpc.StatusCode.PERMISSION_DENIED, f"client {identity!r} is revoked")
        if claimed != identity:
            raise Refusal(
                grpc.StatusCode.PERMISSION_DENIED,
                f"certificate belongs to {identity!r}, request claims {capped(claimed)!r}",
            )
        slot = self.registry.slots[numbers[identity]]
        if session is not None and session != slot.session:
            raise Refusal(
                grpc.StatusCode.FAILED_PRECONDITION, "unknown session: join again", routine=True
            )
        slot.last_seen = self.now()
        return slot

    async def _authenticate(
        self, context: grpc.aio.ServicerContext, claimed: str, session: str | None
    ) -> ClientSlot:
        """The caller's slot, or the RPC aborted with the refusal's status and reason."""
        try:
            return self._identify(context, claimed, session)
        except Refusal as refusal:
            await self._refuse(context, claimed, refusal)
            raise  # context.abort has already raised; this only tells type checkers

    async def _refuse(
        self, context: grpc.aio.ServicerContext, claimed: str, refusal: Refusal
    ) -> None:
        """Abort the RPC with the refusal's status and reason, after recording it in the
        ledger (rate-limited per caller); a stale session (the server restarted, the client
        joins again) is routine and goes unrecorded."""
        if not refusal.routine:
            self.coordinator.ledger.record_limited(
                "refused", self._peer(context), client=capped(claimed), reason=str(refusal)
            )
        await context.abort(refusal.code, str(refusal))

    # -- RPCs ------------------------------------------------------------------------------------
    async def Join(
        self, request: pb.JoinRequest, context: grpc.aio.ServicerContext
    ) -> pb.JoinReply:
        """Register a (re)connecting client and make it available to the strategy."""
        slot = await self._authenticate(context, request.client_id, None)
        if slot.session:
            self.coordinator.client_gone(slot.number)
        slot.forget()
        slot.session = secrets.token_hex(16)
        profile = request.profile
        libraries = sorted(profile.libraries.items())[:MAX_LIBRARIES]
        slot.profile = {
            "architecture": capped(profile.architecture),
            "device": capped(profile.device_type),
            "device_name": capped(profile.device_name),
            "cores": profile.cores,
            "memory_bytes": profile.memory_bytes,
            "step_seconds": profile.step_seconds,
            "libraries": {capped(k, 64): capped(v, 64) for k, v in libraries},
            "examples": request.num_examples,
        }
        self.coordinator.declarations_changed()
        self.coordinator.ledger.record_limited(
            "join",
            request.client_id,
            client=slot.number,
            name=request.client_id,
            profile=slot.profile,
            examples=self.coordinator.examples_of(slot.number),
        )
        self.registry.changed.set()
        if slot.number not in self.coordinator.outstanding:
            self.coordinator.client_idle(slot.number)
        return pb.JoinReply(
            session=slot.session,
            heartbeat_seconds=self.heartbeat_seconds,
            model_spec_json=self.spec_json,
            client_number=slot.number,
        )

    async def Heartbeat(
        self,
        request: pb.HeartbeatRequest,
        context: grpc.aio.ServicerContext,
    ) -> pb.HeartbeatReply:
        """Refresh liveness."""
        try:
            slot = self._identify(context, request.client_id, request.session)
        except Refusal as refusal:
            if not refusal.routine:
                await self._refuse(context, request.client_id, refusal)
            return pb.HeartbeatReply(known=False)
        if self._done(slot):
            self._tell_done(slot)
        return pb.HeartbeatReply(known=True, done=slot.told_done)

    def _tell_done(self, slot: ClientSlot) -> None:
        """The client has heard that training is over (the serving loop may be waiting for it)."""
        slot.told_done = True
        self.registry.changed.set()

    def _done(self, slot: ClientSlot) -> bool:
        """Training is over and nothing is parked for this client (an evaluation of the last
        model still goes out first)."""
        return self.coordinator.finished and slot.next_task() is None

    async def GetTask(
        self, request: pb.TaskRequest, context: grpc.aio.ServicerContext
    ) -> pb.TaskReply:
        """Long-poll for the client's next task (at most `wait_seconds`, capped at 30 s)."""
        slot = await self._authenticate(context, request.client_id, request.session)
        slot.held_version = request.held_version if request.holds_model else None
        spent = self.coordinator.budget_spent(slot.number)
        if slot.next_task() is None and not self.coordinator.finished and not spent:
            slot.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(slot.wake.wait(), timeout=min(30.0, request.wait_seconds))
        parked = slot.next_task()
        if parked is None:
            if self.coordinator.finished or spent:
                self._tell_done(slot)
                return pb.TaskReply(status=pb.TaskReply.DONE, reason=spent)
            return pb.TaskReply(status=pb.TaskReply.WAIT)
        task = parked.task
        deadline = 0.0 if task.deadline is None else max(0.0, task.deadline - self.now())
        return task_reply(task, parked.task_id, deadline, self._download(slot, parked))

    @staticmethod
    def _download(slot: ClientSlot, parked: Parked) -> str:
        """What a task's download sends: nothing of the model when the client holds it."""
        task = parked.task
        return (
            HELD if task.download == "full" and slot.held_version == task.version else task.download
        )

    async def DownloadModel(
        self,
        request: pb.DownloadRequest,
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[bytes]:
        """Stream what the named task starts from, in bounded chunks."""
        with self._stream_of(context) as aborted:
            if aborted is not None:
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, aborted)
            async for message in self._download_stream(request, context):
                yield message

    async def _download_stream(
        self, request: pb.DownloadRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        slot = await self._authenticate(context, request.client_id, request.session)
        parked = slot.parked(request.task_id)
        if parked is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "no such task for this client")
            return
        chunk = min(MAX_CHUNK_BYTES, request.chunk_bytes or MAX_CHUNK_BYTES)
        model = parked.model
        frames = download_frames(
            parked.task,
            model.params,
            model.buffers,
            self._download(slot, parked),
            chunk,
        )
        for parts in frames:
            message = frame_message(DOWNLOAD_FRAME_FIELD, parts)
            self.bytes_down += len(message)
            yield message

    async def UploadUpdate(
        self,
        request_iterator: AsyncIterator[pb.UploadHeader | memoryview],
        context: grpc.aio.ServicerContext,
    ) -> pb.UploadReply:
        """Reassemble, validate and deliver one update or evaluation; refusals name their
        reason in the reply and the ledger, and close the task."""
        with self._stream_of(context) as aborted:
            if aborted is not None:
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, aborted)
            return await self._upload(request_iterator, context)

    async def _upload(
        self,
        request_iterator: AsyncIterator[pb.UploadHeader | memoryview],
        context: grpc.aio.ServicerContext,
    ) -> pb.UploadReply:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.upload_timeout
        try:
            header = await asyncio.wait_for(
                anext(aiter(request_iterator), None), self.upload_timeout
            )
        except TimeoutError:
            header = None
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"no upload header within deployment.upload_timeout ({self.upload_timeout:g} s)",
            )
        except FrameError as error:
            header = None
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed upload: {error}")
        if not isinstance(header, pb.UploadHeader):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "upload must start with its header"
            )
            raise AssertionError
        try:
            slot = self._identify(context, header.client_id, header.session)
            parked = slot.parked(header.task_id)
            if parked is None:
                raise Refusal(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    "upload names no outstanding task of this client (replayed or stale)",
                )
        except Refusal as refusal:
            await self._refuse(context, header.client_id, refusal)
            raise  # context.abort has already raised; this only tells type checkers
        slot.take(parked)
        with self._upload_memory() as in_memory:
            return await self._receive(
                request_iterator, header, slot, parked.task, deadline, in_memory
            )

    @contextlib.contextmanager
    def _upload_memory(self) -> Iterator[bool]:
        """Whether this upload may be received in memory (one of `memory_uploads` places), held
        until its update has been delivered. Held arrivals the coordinator keeps in memory fill
        places too, so concurrent uploads never hold more than `memory_uploads` models."""
        layout = self.coordinator.layout
        model_bytes = max(1, layout.params.nbytes + layout.buffers.nbytes)
        held = -(-self.coordinator.kept_in_memory_bytes // model_bytes)
        in_memory = self._in_memory + held < self.memory_uploads
        self._in_memory += in_memory
        try:
            yield in_memory
        finally:
            self._in_memory -= in_memory

    async def _receive(
        self,
        request_iterator: AsyncIterator[pb.UploadHeader | memoryview],
        header: pb.UploadHeader,
        slot: ClientSlot,
        task: Task,
        deadline: float,
        in_memory: bool,
    ) -> pb.UploadReply:
        """Reassemble an admitted upload's frames by `deadline` (event-loop time) and deliver
        the update."""
        evaluation = task.technique == "evaluate"
        loop = asyncio.get_running_loop()
        assembler: VectorAssembler | None = None
        try:
            expected = upload_layout(header, self.coordinator.layout, task.local_steps)
            spool_dir = None if in_memory else self.spool_dir
            assembler = VectorAssembler(expected, spool_dir, self.spool_bytes)
            left = max(0.0, deadline - loop.time())
            await asyncio.wait_for(self._frames(request_iterator, assembler), left)
            vectors = assembler.result()
        except (FrameError, TimeoutError) as error:
            if assembler is not None:
                assembler.discard()
            reason = (
                f"upload not complete within deployment.upload_timeout ({self.upload_timeout:g} s)"
                if isinstance(error, TimeoutError)
                else f"malformed upload: {error}"
            )
            if evaluation:
                self.coordinator.ledger.record("rejected", client=slot.number, reason=reason)
                self.coordinator.evaluation_lost(task)
            else:
                self.coordinator.refuse(task, reason)
                self._return(slot)
            return pb.UploadReply(accepted=False, reason=reason)
        update = update_from_upload(header, slot.number, vectors)
        if evaluation:
            reason = self.coordinator.receive_evaluation(update)
        else:
            reason = self.coordinator.receive(update, then_idle=bool(slot.session))
            self._return(slot)
        for vector in vectors.values():
            release_file_pages(vector)
        return pb.UploadReply(accepted=reason is None, reason=reason or "")

    @contextlib.contextmanager
    def _stream_of(self, context: grpc.aio.ServicerContext) -> Iterator[str | None]:
        """Count an upload or download stream against its peer's certificate identity while it
        lasts; yields a refusal when that peer already has MAX_STREAMS_PER_CLIENT open."""
        peer = self._peer(context)
        if self._streams.get(peer, 0) >= MAX_STREAMS_PER_CLIENT:
            yield (
                f"client {capped(peer)!r} already has {MAX_STREAMS_PER_CLIENT} uploads or "
                "downloads open; finish one first"
            )
            return
        self._streams[peer] = self._streams.get(peer, 0) + 1
        try:
            yield None
        finally:
            self._streams[peer] -= 1
            if not self._streams[peer]:
                del self._streams[peer]

    @staticmethod
    def _peer(context: grpc.aio.ServicerContext) -> str:
        """The caller's certificate identity, capped (a placeholder when it has none)."""
        try:
            return capped(peer_client_id(context.auth_context()), 64)
        except Exception:
            return "<no identity>"

    async def _frames(
        self,
        request_iterator: AsyncIterator[pb.UploadHeader | memoryview],
        assembler: VectorAssembler,
    ) -> None:
        """Feed an upload's frames to its assembler."""
        async for part in request_iterator:
            if not isinstance(part, memoryview):
                raise FrameError("a second header inside one upload")
            self.bytes_up += len(part)
            assembler.add(part)

    async def Leave(
        self, request: pb.LeaveRequest, context: grpc.aio.ServicerContext
    ) -> pb.LeaveReply:
        """A client says goodbye; its outstanding task, if any, is lost."""
        slot = await self._authenticate(context, request.client_id, request.session)
        slot.forget()
        self.coordinator.client_gone(slot.number)
        self.registry.changed.set()
        return pb.LeaveReply()

    def _return(self, slot: ClientSlot) -> None:
        """A connected client whose task is over is idle (unless the coordinator made it so)."""
        number = slot.number
        coordinator = self.coordinator
        if (
            slot.session
            and number not in coordinator.outstanding
            and number not in coordinator.idle_clients()
        ):
            coordinator.client_idle(number)
