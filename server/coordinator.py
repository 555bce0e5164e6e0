"""The coordinator: one event loop's worth of state that drives a strategy.

Drivers (the simulation's virtual clock, the gRPC server's wall clock) call `start`,
`client_idle`, `receive`, `task_lost` and `timer` one at a time; the coordinator validates,
keeps the model versions clients still train on, records the ledger and offers the strategy
its `StrategyContext`. It also runs federated evaluation: published versions that are due go to
a sample of clients as `evaluate` tasks in a lane of their own (a client's evaluation never makes
it busy for the strategy), and the example-weighted results go to `evaluation_listeners`.
Nothing here knows how bytes move.
"""

from __future__ import annotations

import contextlib
import hashlib
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from fedcore.clients.techniques import TaskError
from fedcore.clients.trainer import expected_payload
from fedcore.config import EvaluationConfig
from fedcore.params import ModelLayout
from fedcore.payloads import DenseDelta
from fedcore.records import Task, Update, describe
from fedcore.serialization import DEFAULT_CHUNK_BYTES, chunk_digests
from fedcore.server.ledger import Ledger
from fedcore.server.privacy_accounting import PrivacyAccountant
from fedcore.server.validation import UpdateRejected, ValidationPolicy, validate
from fedcore.strategies.base import Arrival, GlobalModel, Strategy
from fedcore.wire import spooled

#: Vectors of a held arrival at least this large go to the spool (`Coordinator.keep`).
KEEP_SPOOL_BYTES = 1 << 20


class Driver(Protocol):
    """What a transport offers the coordinator."""

    def now(self) -> float:
        """Current time in seconds."""

    def send(self, task: Task, model: GlobalModel) -> None:
        """Deliver a task and the model it starts from to its client (an `evaluate` task too:
        the driver answers it through `Coordinator.receive_evaluation`)."""

    def schedule(self, at: float, key: str) -> None:
        """Call `Coordinator.timer(key)` at time `at`."""


@dataclass
class FederatedEvaluation:
    """Which published versions clients evaluate (every `every` versions and the last), how
    many clients each (`clients`, drawn from the candidates the driver offers) and at most how
    many hold-out examples each scores (`examples`, 0: all)."""

    every: int
    clients: int
    last: int
    seed: int
    examples: int = 0

    @classmethod
    def of(cls, config: EvaluationConfig, rounds: int, seed: int) -> FederatedEvaluation:
        """The plan a run's `evaluation` settings give, for a run of `rounds` versions."""
        return cls(config.every, config.federated_clients, rounds, seed, config.client_examples)

    def due(self, version: int) -> bool:
        """Whether clients evaluate `version`."""
        return self.clients > 0 and (version % self.every == 0 or version >= self.last)

    def choose(self, version: int, candidates: list[int]) -> list[int]:
        """Up to `clients` of the candidates, seeded by the version."""
        if len(candidates) <= self.clients:
            return sorted(candidates)
        rng = np.random.default_rng([self.seed, 11, version])
        return sorted(int(c) for c in rng.choice(candidates, size=self.clients, replace=False))


@dataclass
class EvaluationRound:
    """The replies awaited for one version's federated evaluation, and their running sums."""

    waiting: set[int]
    examples: int = 0
    loss_sum: float = 0.0
    correct_sum: float = 0.0

    def metrics(self) -> dict[str, float]:
        """Example-weighted loss and accuracy (empty when nobody replied)."""
        if not self.examples:
            return {}
        return {
            "fed_loss": self.loss_sum / self.examples,
            "fed_accuracy": self.correct_sum / self.examples,
            "fed_examples": float(self.examples),
        }


@dataclass
class Publication:
    """A model just published, with what the strategy said about it."""

    model: GlobalModel
    time: float
    info: dict[str, Any] = field(default_factory=dict)
    train_loss: float | None = None
    accepted: int = 0
    #: Clients were asked to evaluate this version; `evaluation_listeners` hear the result.
    evaluating: bool = False


class Coordinator:
    """Owns the global model, outstanding tasks and idle clients; implements StrategyContext."""

    def __init__(
        self,
        strategy: Strategy,
        layout: ModelLayout,
        initial: GlobalModel,
        driver: Driver,
        *,
        max_versions: int,
        num_clients: int,
        ledger: Ledger | None = None,
        policy: ValidationPolicy | None = None,
        hash_models: bool = False,
        client_speed: Callable[[int], float | None] | None = None,
        evaluation: FederatedEvaluation | None = None,
        evaluation_candidates: Callable[[], list[int]] | None = None,
        spool_dir: Path | None = None,
        declared_examples: Callable[[int], int] | None = None,
        keep_in_memory_bytes: int = 0,
        privacy: PrivacyAccountant | None = None,
        min_trainable: int = 1,
    ) -> None:
        """`privacy` keeps each client's privacy account (their ε joins the ledger); a client
        whose budget cannot afford another training task is never idle again, and the run stops
        when fewer than `min_trainable` clients can still train."""
        self.strategy = strategy
        self.privacy = privacy
        self.min_trainable = min_trainable
        #: Clients whose privacy budget cannot afford another training task.
        self.spent: set[int] = set()
        self.spool_dir = spool_dir
        #: Held arrivals' large vectors stay in memory while they total at most this (`keep`).
        self.keep_in_memory_bytes = keep_in_memory_bytes
        self._kept_in_memory = 0
        #: Each client's declared example count (None: only validation.max_examples bounds
        #: what an update claims).
        self.declared_examples = declared_examples
        self._declared_median: float | None = None
        self._client_speed = client_speed
        self._layout = layout
        self._model = initial
        self.driver = driver
        self.max_versions = max_versions
        self._num_clients = num_clients
        self.ledger = ledger or Ledger()
        self.ledger.run_time = lambda: self.now
        self.policy = policy or ValidationPolicy()
        self.hash_models = hash_models
        self.outstanding: dict[int, Task] = {}
        self._expected: dict[int, str] = {}
        self.evaluation = evaluation
        self._evaluation_candidates = evaluation_candidates
        self.evaluating: dict[int, Task] = {}
        self._evaluation_rounds: dict[int, EvaluationRound] = {}
        self.evaluation_listeners: list[Callable[[int, dict[str, float]], None]] = []
        self._idle: set[int] = set()
        self._snapshots: dict[int, tuple[GlobalModel, int]] = {}
        self._timers: dict[str, float] = {}
        self._losses: list[float] = []
        #: Updates accepted since the last published version.
        self.accepted_since_publish = 0
        #: What the coordinator is doing: "aggregating" while the strategy takes an update
        #: or a timer (which may close a round), else "training".
        self.phase = "training"
        self.listeners: list[Callable[[Publication], None]] = []
        self.finished = False
        #: Why training finished (set with `finished`).
        self.stop_reason = ""
        strategy.attach(self)

    # -- StrategyContext ----------------------------------------------------------------------
    @property
    def now(self) -> float:
        """Time from the driver's clock."""
        return self.driver.now()

    @property
    def model(self) -> GlobalModel:
        """The current global model."""
        return self._model

    @property
    def layout(self) -> ModelLayout:
        """Parameter and buffer layouts."""
        return self._layout

    @property
    def num_clients(self) -> int:
        """Clients in the federation."""
        return self._num_clients

    def idle_clients(self) -> list[int]:
        """Idle clients in ascending id order."""
        return sorted(self._idle)

    def client_speed(self, client_id: int) -> float | None:
        """Profiled seconds per local step of a client (simulated device profile, or the one
        measured at a deployed client's join); None when unknown."""
        return self._client_speed(client_id) if self._client_speed is not None else None

    def dispatch(self, task: Task) -> None:
        """Hand a task to the driver; the client is busy until it returns or is lost."""
        if self.finished:
            return
        if task.client_id not in self._idle:
            raise RuntimeError(f"strategy dispatched to client {task.client_id}, which is not idle")
        if task.version != self._model.version:
            raise RuntimeError(f"task for version {task.version}, current is {self._model.version}")
        self._expected[task.client_id] = self._payload_of(task)
        self._idle.discard(task.client_id)
        self.outstanding[task.client_id] = task
        self.driver.send(task, self._hold(task.version))

    def set_timer(self, at: float, key: str) -> None:
        """Ask the driver for a timer; a later request for the same key replaces it."""
        self._timers[key] = at
        self.driver.schedule(at, key)

    def keep(self, arrival: Arrival) -> Arrival:
        """`arrival` with its dense delta and buffers of at least KEEP_SPOOL_BYTES moved to the
        spool directory (unchanged without one), unless they fit in what remains of
        `keep_in_memory_bytes` (counted until they are freed): a few held updates of a large
        model then cost no disk round trip."""
        update = arrival.update
        if self.spool_dir is None:
            return arrival
        payload = update.payload
        if isinstance(payload, DenseDelta):
            payload = DenseDelta(self._kept(payload.values, self.spool_dir))
        buffers = update.buffers
        if buffers is not None:
            buffers = self._kept(buffers, self.spool_dir)
        return replace(arrival, update=replace(update, payload=payload, buffers=buffers))

    def _kept(self, vector: torch.Tensor, spool_dir: Path) -> torch.Tensor:
        nbytes = vector.numel() * vector.element_size()
        if nbytes < KEEP_SPOOL_BYTES or vector.untyped_storage().filename is not None:
            return vector  # small, or received into the spool already
        if self._kept_in_memory + nbytes > self.keep_in_memory_bytes:
            return spooled(vector, spool_dir, KEEP_SPOOL_BYTES)
        self._kept_in_memory += nbytes
        weakref.finalize(vector, self._freed, nbytes)
        return vector

    @property
    def kept_in_memory_bytes(self) -> int:
        """Bytes of held arrivals' large vectors `keep` left in memory, until they are freed."""
        return self._kept_in_memory

    def _freed(self, nbytes: int) -> None:
        self._kept_in_memory -= nbytes

    def publish(self, params: torch.Tensor, buffers: torch.Tensor, **info: Any) -> GlobalModel:
        """Install the next version, tell listeners, and stop after `max_versions`. Under
        central DP the model is noised first, for the updates accepted since the last one."""
        self._layout.params.check(params)
        version = self._model.version + 1
        if self.privacy is not None and self.privacy.mode == "central":
            params = self.privacy.noised(params, version, self.accepted_since_publish)
        model = GlobalModel(params, buffers, version)
        self._model = model
        record: dict[str, Any] = {"version": model.version}
        if self.hash_models:
            record["sha256"] = model_digest(model)
        record.update(
            {k: v for k, v in info.items() if isinstance(v, bool | int | float | str | list)}
        )
        self.ledger.record("model", **record)
        losses, self._losses = self._losses, []
        accepted, self.accepted_since_publish = self.accepted_since_publish, 0
        publication = Publication(
            model, self.now, info, sum(losses) / len(losses) if losses else None, accepted
        )
        if model.version >= self.max_versions:
            self.stop(f"reached {self.max_versions} model versions")
        evaluators = self._evaluators(model.version)
        publication.evaluating = bool(evaluators)
        for listener in self.listeners:
            listener(publication)
        for client in evaluators:
            self._send_evaluation(client)
        return model

    def stop(self, reason: str) -> None:
        """Finish training now, for `reason` (the last version, or a listener that saw the
        run diverge): no task is dispatched after this."""
        self.finished = True
        self.stop_reason = reason

    # -- checkpoints ---------------------------------------------------------------------------
    def pending_timers(self) -> dict[str, float]:
        """Timers the strategy asked for that have not fired yet."""
        return dict(self._timers)

    def restore(
        self, model: GlobalModel, strategy_state: dict[str, Any], timers: dict[str, float]
    ) -> None:
        """Continue from a checkpoint, before `start`: tasks outstanding when it was taken are
        gone, and the strategy's `on_start` re-plans them."""
        self._layout.params.check(model.params)
        self._model = model
        self.strategy.load_state_dict(strategy_state)
        for key, at in timers.items():
            self.set_timer(at, key)
        if model.version >= self.max_versions:
            self.stop(f"reached {self.max_versions} model versions")

    # -- events from the driver ------------------------------------------------------------------
    def add_clients(self, client_ids: Iterable[int]) -> None:
        """Clients present before the start, idle, announced to the strategy by `start`."""
        self._idle.update(client for client in client_ids if self._can_train(client))

    def start(self) -> None:
        """Let the strategy begin."""
        self.strategy.on_start()

    def client_idle(self, client_id: int) -> None:
        """A client joined or is free again."""
        if client_id in self.outstanding:
            raise RuntimeError(f"client {client_id} reported idle with a task outstanding")
        if not self._can_train(client_id):
            return
        self._idle.add(client_id)
        if not self.finished:
            self.strategy.on_client_idle(client_id)

    def client_gone(self, client_id: int) -> None:
        """A client left or stopped answering; its outstanding task and evaluation are lost."""
        self._idle.discard(client_id)
        task = self.outstanding.get(client_id)
        if task is not None:
            self.task_lost(task)
        evaluation = self.evaluating.get(client_id)
        if evaluation is not None:
            self.evaluation_lost(evaluation)

    def task_lost(self, task: Task, reason: str = "") -> None:
        """An outstanding task will never return (`reason`, when given, goes to the ledger)."""
        if self.outstanding.get(task.client_id) is not task:
            return
        del self.outstanding[task.client_id]
        self._release(task.version)
        why = {"reason": reason} if reason else {}
        self.ledger.record("lost", client=task.client_id, version=task.version, **why)
        if not self.finished:
            self.strategy.on_task_lost(task)

    def receive(self, update: Update, *, then_idle: bool = False) -> str | None:
        """Validate and deliver an update; return None if accepted, else the refusal reason.

        `then_idle` says the client is free again at once: it is then idle before the strategy
        hears the update, so that work the update sets off (a round or a group closing) can
        reassign it with everyone else, and `on_client_idle` follows only if it is still idle.
        The driver must then not report it idle itself."""
        client = update.client_id
        task = self.outstanding.get(client)
        entry = describe(update)
        if self.privacy is not None:
            examples = min(update.num_examples, self.policy.max_examples)
            entry["epsilon"] = self.privacy.released(client, examples, update.local_steps)
        if task is None:
            reason = "no outstanding task for this client (duplicate or unsolicited update)"
            self.ledger.record("rejected", reason=reason, **entry)
            return reason
        try:
            validate(update, task, self._expected[client], self._layout, self.policy)
        except UpdateRejected as exc:
            self._refuse(task, str(exc), entry, then_idle)
            return str(exc)
        base, _ = self._snapshots[task.version]
        self._finish_task(task)
        staleness = self._model.version - task.version
        limit = self.strategy.max_staleness
        if self.finished or (limit is not None and staleness > limit):
            reason = "training finished" if self.finished else f"stale by {staleness} versions"
            self.ledger.record("expired", reason=reason, **entry)
            self._idle_after(client, then_idle)
            return reason
        cap = self._example_cap(client)
        if update.num_examples > cap:
            entry["examples_capped"] = cap
            update = replace(update, num_examples=cap)
        if self.privacy is not None and self.privacy.mode == "central":
            update = self.privacy.clip(update)
        self.ledger.record("accepted", staleness=staleness, **entry)
        self.accepted_since_publish += 1
        if "train_loss" in update.metrics:
            self._losses.append(update.metrics["train_loss"])
        if then_idle and self._can_train(client):
            self._idle.add(client)
        with self._aggregating():
            self.strategy.on_update(Arrival(update, base, staleness))
        if then_idle and client in self._idle and not self.finished:
            self.strategy.on_client_idle(client)
        return None

    def receive_evaluation(self, update: Update) -> str | None:
        """Validate an evaluation reply and count it for its version; return None if accepted,
        else the refusal reason (recorded in the ledger)."""
        task = self.evaluating.get(update.client_id)
        entry = describe(update)
        if task is None:
            reason = "no outstanding evaluation for this client (duplicate or unsolicited)"
            self.ledger.record("rejected", reason=reason, **entry)
            return reason
        self._finish_evaluation(task)
        try:
            validate(update, task, "none", self._layout, self.policy)
        except UpdateRejected as exc:
            self.ledger.record("rejected", reason=str(exc), **entry)
            self._evaluation_returned(task, None)
            return str(exc)
        self.ledger.record("evaluated", **entry, **update.metrics)
        self._evaluation_returned(task, update)
        return None

    def evaluation_lost(self, task: Task) -> None:
        """An outstanding evaluation will never return."""
        if self.evaluating.get(task.client_id) is task:
            self._finish_evaluation(task)
            self._evaluation_returned(task, None)

    def pending_evaluations(self) -> int:
        """Versions whose federated evaluation still awaits replies."""
        return len(self._evaluation_rounds)

    def refuse(self, task: Task, reason: str) -> None:
        """An upload for `task` was unusable before it could become an Update (e.g. malformed)."""
        if self.outstanding.get(task.client_id) is task:
            self._refuse(task, reason, {"client": task.client_id, "base_version": task.version})

    def timer(self, key: str) -> None:
        """A timer fired; stale ones (replaced or already served) are ignored."""
        if key in self._timers and self._timers[key] <= self.now and not self.finished:
            del self._timers[key]
            with self._aggregating():
                self.strategy.on_timer(key)

    @contextlib.contextmanager
    def _aggregating(self) -> Iterator[None]:
        self.phase = "aggregating"
        try:
            yield
        finally:
            self.phase = "training"

    # -- internals ---------------------------------------------------------------------------
    def _refuse(
        self, task: Task, reason: str, entry: dict[str, Any], then_idle: bool = False
    ) -> None:
        """Record the refusal; the task is over, so the strategy need not wait for it."""
        self._finish_task(task)
        self.ledger.record("rejected", reason=reason, **entry)
        if not self.finished:
            self.strategy.on_task_lost(task)
        self._idle_after(task.client_id, then_idle)

    def _can_train(self, client: int) -> bool:
        """Whether `client`'s privacy budget affords another training task (always without a
        budget); a client that cannot is recorded as spent, once."""
        if client in self.spent:
            return False
        if self.privacy is None or self.privacy.affords(client, self.examples_of(client)):
            return True
        self.spent.add(client)
        self.ledger.record(
            "spent", client=client, epsilon=self.privacy.epsilon(client), budget=self.privacy.budget
        )
        left = self._num_clients - len(self.spent)
        if left < self.min_trainable and not self.finished:
            self.stop(
                f"privacy budget spent: {left} of {self._num_clients} clients can take another "
                f"training task, fewer than clients_per_round ({self.min_trainable})"
            )
        return False

    def budget_spent(self, client: int) -> str:
        """Why `client` gets no more training tasks: its privacy budget ('' while it may)."""
        if client not in self.spent or self.privacy is None:
            return ""
        return (
            f"privacy budget spent: ε {self.privacy.epsilon(client):.4g} of "
            f"{self.privacy.budget:g}, and another task would pass it; no more training tasks"
        )

    def _idle_after(self, client: int, then_idle: bool) -> None:
        """The client of a finished task is idle again, when the driver said it would be."""
        if then_idle:
            self.client_idle(client)

    def _finish_task(self, task: Task) -> None:
        del self.outstanding[task.client_id]
        del self._expected[task.client_id]
        self._release(task.version)

    def _example_cap(self, client: int) -> int:
        """The most examples an update of `client` may count for: what it declared (its
        partition, or its own data at join) and `examples_vs_median` x the clients' median."""
        declared = self.declared_examples
        if declared is None:
            return self.policy.max_examples
        cap = declared(client) or self.policy.max_examples
        if self._declared_median is None:
            known = [count for count in map(declared, range(self._num_clients)) if count]
            self._declared_median = float(np.median(known)) if known else 0.0
        if self.policy.examples_vs_median and self._declared_median:
            cap = min(cap, max(1, int(self.policy.examples_vs_median * self._declared_median)))
        return cap

    def examples_of(self, client: int) -> int:
        """The examples `client` trains on: its own data's count it declared at join, else its
        partition's size (0 when neither is known)."""
        return self.declared_examples(client) if self.declared_examples is not None else 0

    def declarations_changed(self) -> None:
        """A client declared a new example count (at join): the median is taken again."""
        self._declared_median = None

    def _payload_of(self, task: Task) -> str:
        """The payload kind `task`'s upload must carry, which the strategy must take."""
        kind = expected_payload(task)
        if kind not in self.strategy.payloads:
            raise TaskError(
                f"training.technique: strategy {self.strategy.name} takes "
                f"{' or '.join(self.strategy.payloads)} payloads; technique {task.technique!r} "
                f"with its transforms sends {kind}"
            )
        return kind

    def _hold(self, version: int) -> GlobalModel:
        """The model of `version` (the current one), kept until every task on it is over."""
        model, refs = self._snapshots.get(version, (self._model, 0))
        self._snapshots[version] = (model, refs + 1)
        return model

    def _evaluators(self, version: int) -> list[int]:
        """The clients asked to evaluate a version just published (none when not due); an
        evaluation still outstanding at one of them is superseded."""
        if self.evaluation is None or not self.evaluation.due(version):
            return []
        candidates = self._evaluation_candidates() if self._evaluation_candidates else []
        chosen = self.evaluation.choose(version, candidates)
        for client in chosen:
            earlier = self.evaluating.get(client)
            if earlier is not None:
                self.evaluation_lost(earlier)
        if chosen:
            self._evaluation_rounds[version] = EvaluationRound(set(chosen))
        return chosen

    def _send_evaluation(self, client: int) -> None:
        version = self._model.version
        assert self.evaluation is not None
        task = Task(
            client_id=client,
            version=version,
            technique="evaluate",
            hyper={"max_examples": float(self.evaluation.examples)},
            seed=version,
        )
        self.evaluating[client] = task
        self.driver.send(task, self._hold(version))

    def _finish_evaluation(self, task: Task) -> None:
        del self.evaluating[task.client_id]
        self._release(task.version)

    def _evaluation_returned(self, task: Task, update: Update | None) -> None:
        """Count a reply (None: lost or refused); the last one awaited reports the version."""
        rounds = self._evaluation_rounds.get(task.version)
        if rounds is None:
            return
        rounds.waiting.discard(task.client_id)
        if update is not None:
            examples = update.num_examples
            rounds.examples += examples
            rounds.loss_sum += update.metrics["eval_loss"] * examples
            rounds.correct_sum += update.metrics["eval_accuracy"] * examples
        if not rounds.waiting:
            del self._evaluation_rounds[task.version]
            for listener in self.evaluation_listeners:
                listener(task.version, rounds.metrics())

    def _release(self, version: int) -> None:
        model, refs = self._snapshots[version]
        if refs > 1:
            self._snapshots[version] = (model, refs - 1)
        else:
            del self._snapshots[version]


def model_digest(model: GlobalModel) -> str:
    """The model's identity: sha256 over the sha256s of its parameters' and then its buffers'
    raw little-endian bytes, cut in wire-sized chunks (a hash list, hashed on all cores). The
    chunk digests are cached on the model: the ledger's record at publication, the run's
    summary and checks after a resume hash it once."""
    cache = model.chunk_digests(DEFAULT_CHUNK_BYTES)
    digest = hashlib.sha256()
    for name, vector in (("params", model.params), ("buffers", model.buffers)):
        for chunk in chunk_digests(vector, DEFAULT_CHUNK_BYTES, cache.setdefault(name, {})):
            digest.update(bytes.fromhex(chunk))
    return digest.hexdigest()
