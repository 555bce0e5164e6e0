"""The experiment schema: typed dataclasses for every config group, with their value checks.

Hydra composes YAML from `conf/`; `fedcore.typed_config.build` turns the result into these
dataclasses and fails before any training with a message naming the offending key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from fedcore.privacy import analytic_gaussian_sigma
from fedcore.profiles import ProfileConfig
from fedcore.records import Task, TransformSpec
from fedcore.serialization import DEFAULT_CHUNK_BYTES
from fedcore.typed_config import require, require_positive


@dataclass
class DatasetConfig:
    """Which dataset, with loader options (e.g. Shakespeare's min_chars)."""

    #: Dataset name (`conf/dataset/`, docs/datasets.md).
    name: str = "mnist"
    #: Loader options, e.g. Shakespeare's `min_chars` and `max_clients`.
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class PartitionConfig:
    """How training examples are split among clients, and each client's evaluation hold-out."""

    #: How training examples are split: iid, dirichlet (label skew), shards (McMahan), natural (the
    #: dataset's own clients).
    scheme: Literal["iid", "dirichlet", "shards", "natural"] = "dirichlet"
    #: Dirichlet concentration: smaller means more label skew.
    alpha: float = 0.5
    #: Label-sorted shards each client gets (scheme shards).
    shards_per_client: int = 2
    #: Fewest training examples a client may get (the partition is redrawn until all have it).
    min_size: int = 10
    #: Share of each client's examples kept back for federated evaluation.
    holdout: float = 0.1

    def __post_init__(self) -> None:
        require(self.alpha > 0, "alpha", "must be > 0", self.alpha)
        require(
            self.shards_per_client >= 1, "shards_per_client", "must be >= 1", self.shards_per_client
        )
        require(self.min_size >= 1, "min_size", "must be >= 1", self.min_size)
        require(0 <= self.holdout < 1, "holdout", "must be in [0, 1)", self.holdout)


@dataclass
class ServerDataConfig:
    """A small class-balanced data set the server keeps for itself (FedLAW's proxy set).

    Either `examples_per_class` training examples of each class, carved off before partitioning
    so that no client trains on them (a class keeps at least half its examples), or `path`: an
    .npz file with arrays `x` (examples, in the dataset's input shape) and `y` (integer labels).
    Never taken from the test set.
    """

    #: Training examples of each class the server keeps (removed before partitioning; 0: none).
    examples_per_class: int = 0
    #: An .npz with arrays x and y for the server instead.
    path: str | None = None

    def __post_init__(self) -> None:
        require(
            self.examples_per_class >= 0,
            "examples_per_class",
            "must be >= 0 (0: none)",
            self.examples_per_class,
        )
        require(
            not (self.path and self.examples_per_class),
            "path",
            "give either path or examples_per_class, not both (with a path, set "
            "server_data.examples_per_class=0)",
            self.path,
        )


@dataclass
class ModelConfig:
    """Which model (`auto` picks the dataset's default), with its options."""

    #: Model (`conf/model/`); auto picks the dataset's default.
    name: str = "auto"
    #: Model options, e.g. an MLP's `hidden` sizes.
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvaluationConfig:
    """When and on what the global model is evaluated: every `every` versions, centrally on
    at most `test_examples` of the test set and by `federated_clients` clients on at most
    `client_examples` of their hold-outs each (fixed, seeded samples of larger sets, so that
    one evaluation costs a bounded amount however large the data)."""

    #: Evaluate every this many model versions (the last one always).
    every: int = 1
    #: Central evaluation on a fixed seeded sample of at most this many test examples (0: all).
    test_examples: int = 10_000
    #: Clients that evaluate each evaluated version on their hold-outs (0: none).
    federated_clients: int = 20
    #: Each of them scores a fixed seeded sample of at most this many hold-out examples (0: all).
    client_examples: int = 500

    def __post_init__(self) -> None:
        require(self.every >= 1, "every", "must be >= 1", self.every)
        require(
            self.test_examples >= 0, "test_examples", "must be >= 0 (0: all)", self.test_examples
        )
        require(
            self.federated_clients >= 0, "federated_clients", "must be >= 0", self.federated_clients
        )
        require(
            self.client_examples >= 0,
            "client_examples",
            "must be >= 0 (0: all)",
            self.client_examples,
        )


@dataclass
class PrivacyConfig:
    """Differential privacy (docs/privacy.md). `local`: every client clips its delta to
    `max_norm` and adds Gaussian noise before upload (the `ldp` transform, added after the
    configured ones): each upload is private against the server itself, the unit is one
    client's update. `dpsgd`: clients train with DP-SGD through Opacus (the `dpsgd` technique):
    the unit is one training example, each client's examples protected by its own account."""

    #: none; local (noise on each client's update before it leaves the client); dpsgd
    #: (per-example clipping and noise in local training); central (the server clips each
    #: update and noises their mean: client-level DP from a trusted server).
    mode: Literal["none", "local", "dpsgd", "central"] = "none"
    #: L2 bound C: on a client's delta (local, central), on each example's gradient (dpsgd).
    max_norm: float = 1.0
    #: Noise std over the sensitivity: local, noise z * 2C on every coordinate of an update
    #: (0: calibrated from `epsilon`); dpsgd, z * C on each step's summed gradient; central,
    #: z * C / k on the mean of k clipped updates.
    noise_multiplier: float = 0.0
    #: local only: the target ε of one upload at `delta` when noise_multiplier is 0 (the
    #: analytic Gaussian mechanism, exact for every ε).
    epsilon: float = 0.0
    #: The δ every ε is stated at; below 1 / num_clients (local) or 1 / the smallest client's
    #: example count (dpsgd).
    delta: float = 1e-5
    #: dpsgd: Opacus's accountant, rdp or prv.
    accountant: Literal["rdp", "prv"] = "rdp"
    #: dpsgd: ghost clipping (norms without per-example gradients), else per-example gradients.
    ghost: bool = True
    #: The ε a client may spend (0: no cap): a client whose next update would take it past
    #: this gets no more training tasks, and the run stops when fewer than clients_per_round
    #: clients have budget left.
    budget: float = 0.0

    def __post_init__(self) -> None:
        require_positive("max_norm", self.max_norm)
        require(0 < self.delta < 1, "delta", "must be in (0, 1)", self.delta)
        require(
            math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0,
            "noise_multiplier",
            "must be finite and >= 0",
            self.noise_multiplier,
        )
        require(
            math.isfinite(self.epsilon) and self.epsilon >= 0,
            "epsilon",
            "must be finite and >= 0",
            self.epsilon,
        )
        require(
            math.isfinite(self.budget) and self.budget >= 0,
            "budget",
            "must be finite and >= 0 (0: no cap)",
            self.budget,
        )
        if self.mode == "local":
            require(
                (self.noise_multiplier > 0) != (self.epsilon > 0),
                "noise_multiplier",
                "set exactly one of noise_multiplier > 0 (sigma = noise_multiplier * "
                "sensitivity) and epsilon > 0 (a per-upload target); sigma <= 0 is no privacy",
                self.noise_multiplier,
            )
        if self.mode in ("dpsgd", "central"):
            require(
                self.noise_multiplier > 0,
                "noise_multiplier",
                f"must be > 0 under mode {self.mode} (sigma <= 0 is no privacy)",
                self.noise_multiplier,
            )
            require(
                self.epsilon == 0,
                "epsilon",
                f"is for mode local; {self.mode} takes noise_multiplier, and its ε follows "
                "from the steps taken",
                self.epsilon,
            )

    def multiplier(self) -> float:
        """The noise multiplier z in force: as set, or the analytic Gaussian mechanism's for
        one (`epsilon`, `delta`) release."""
        if self.noise_multiplier > 0:
            return self.noise_multiplier
        return analytic_gaussian_sigma(self.epsilon, self.delta)

    def transform(self) -> dict[str, Any]:
        """The `ldp` transform that `local` mode adds after the configured ones."""
        return {"name": "ldp", "max_norm": self.max_norm, "noise_multiplier": self.multiplier()}


@dataclass
class DivergenceConfig:
    """When a run counts as diverged and stops (`server/divergence.py`)."""

    #: A training or test loss above this multiple of the initial model's test loss (or a
    #: non-finite one) stops the run; 0: never stop.
    loss_factor: float = 10.0

    def __post_init__(self) -> None:
        require(
            self.loss_factor == 0 or self.loss_factor > 1,
            "loss_factor",
            "must be 0 (off) or > 1",
            self.loss_factor,
        )


@dataclass
class SimulationConfig:
    """Execution of virtual clients: in-process (workers 0) or a pool of worker processes
    ("auto": one per usable core, `server/simulation.py`); a time budget. The worker count
    never changes a result: tasks are computed from their own seeds and received in order."""

    #: Worker processes for simulated clients: auto (one per usable core when there are two or more)
    #: or a count (0: in-process).
    workers: int | Literal["auto"] = "auto"
    #: Stop at this simulated time in seconds (0: no limit).
    max_time: float = 0.0
    #: Record each published model's sha256 in the ledger.
    hash_models: bool = False

    def __post_init__(self) -> None:
        require(
            isinstance(self.workers, str) or self.workers >= 0,
            "workers",
            'must be >= 0 or "auto"',
            self.workers,
        )
        require(self.max_time >= 0, "max_time", "must be >= 0 (0: unlimited)", self.max_time)


@dataclass
class OutputConfig:
    """What a run writes and shows."""

    #: The live display: rich panel, plain lines, off, or auto (rich on a terminal).
    progress: Literal["auto", "rich", "plain", "off"] = "auto"
    #: Write the final model to `model.fct`.
    save_model: bool = True
    #: Write `metrics.png`.
    plot: bool = True
    #: Write `ledger.jsonl`.
    ledger: bool = True
    #: Also write the metrics as TensorBoard scalars in `RUN/tensorboard` (the tensorboard extra).
    tensorboard: bool = False


@dataclass
class TrainingConfig:
    """What every training task asks of a client: the client technique and its parameters
    (`clients/techniques/`), and the update transforms applied before upload, in order
    (`clients/transforms/`, e.g. `[{name: topk, fraction: 0.1}]`)."""

    #: Local SGD steps per training task (unless local_epochs is set).
    local_steps: int = 10
    #: Local epochs per task instead of steps (0: use local_steps).
    local_epochs: float = 0.0
    #: Examples per local step.
    batch_size: int = 32
    #: Clients' learning rate.
    lr: float = 0.05
    #: Clients' SGD momentum (reset each task).
    momentum: float = 0.0
    #: Clients' L2 weight decay.
    weight_decay: float = 0.0
    #: Client technique (`clients/techniques/`); strategies may set their own.
    technique: str = "sgd"
    #: Extra parameters for the technique.
    options: dict[str, float] = field(default_factory=dict)
    #: Update transforms before upload, in order, e.g. `[{name: topk, fraction: 0.1}]`.
    transforms: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        require(self.local_steps >= 1, "local_steps", "must be >= 1", self.local_steps)
        require(self.local_epochs >= 0, "local_epochs", "must be >= 0", self.local_epochs)
        require(self.batch_size >= 1, "batch_size", "must be >= 1", self.batch_size)
        require_positive("lr", self.lr)
        require(0 <= self.momentum < 1, "momentum", "must be in [0, 1)", self.momentum)
        require(self.weight_decay >= 0, "weight_decay", "must be >= 0", self.weight_decay)
        for index, spec in enumerate(self.transforms):
            name = spec.get("name")
            require(
                isinstance(name, str) and bool(name),
                f"transforms[{index}].name",
                "must name an update transform",
                name,
            )
            for key, value in spec.items():
                require(
                    key == "name" or (isinstance(value, int | float) and math.isfinite(value)),
                    f"transforms[{index}].{key}",
                    "must be a finite number",
                    value,
                )

    def hyper(self) -> dict[str, float]:
        """The technique's parameters as a task carries them."""
        return {
            "epochs": self.local_epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "momentum": self.momentum,
            "weight_decay": self.weight_decay,
            **self.options,
        }

    def transform_specs(self) -> tuple[TransformSpec, ...]:
        """The configured update transforms as tasks carry them."""
        return tuple(
            TransformSpec(str(spec["name"]), {k: float(v) for k, v in spec.items() if k != "name"})
            for spec in self.transforms
        )

    def task(
        self, client_id: int, version: int, rng: np.random.Generator, deadline: float | None = None
    ) -> Task:
        """A training task from model `version`, with a task seed drawn from the sampler."""
        return Task(
            client_id=client_id,
            version=version,
            technique=self.technique,
            local_steps=self.local_steps,
            hyper=self.hyper(),
            deadline=deadline,
            seed=int(rng.integers(2**62)),
            transforms=self.transform_specs(),
        )


@dataclass(frozen=True)
class ValidationPolicy:
    """Bounds every update must respect before it can touch the model (beyond shape, dtype,
    finiteness and version, which are always checked)."""

    #: Bound on the example count an update may claim.
    max_examples: int = 10_000_000
    #: L2 bound on an update's delta (0: no bound).
    max_delta_norm: float = 0.0
    #: An update counts for at most this multiple of the median example count clients declare
    #: (their partition's size, or the count a client with its own data declares at join).
    examples_vs_median: float = 3.0

    def __post_init__(self) -> None:
        require(self.max_examples >= 1, "max_examples", "must be >= 1", self.max_examples)
        require(
            self.examples_vs_median == 0 or self.examples_vs_median >= 1,
            "examples_vs_median",
            "must be 0 (no bound) or >= 1",
            self.examples_vs_median,
        )
        require(
            self.max_delta_norm >= 0,
            "max_delta_norm",
            "must be >= 0 (0: no bound)",
            self.max_delta_norm,
        )


def address_port(address: str) -> int | None:
    """The port of a `HOST:PORT` or `[IPv6]:PORT` address, or None when it has no valid one."""
    host, colon, port = address.rpartition(":")
    if (
        not colon
        or not host
        or not port.isdigit()
        or (host.count(":") and not host.startswith("["))
    ):
        return None
    number = int(port)
    return number if number <= 65535 else None


@dataclass
class DeploymentConfig:
    """`fedcore server`: where it listens, its certificates, and liveness timing."""

    #: HOST:PORT the server listens on (port 0: any free port, printed at start).
    address: str = "127.0.0.1:50051"
    #: The server's certificate folder (`fedcore certs init` makes it: DIR/server).
    certs: str = "certs"
    #: Seconds between a client's heartbeats.
    heartbeat_seconds: float = 2.0
    #: Seconds without a heartbeat after which a client is gone and its task lost.
    liveness_timeout: float = 10.0
    #: Payload bytes per tensor frame on the wire (at most 2 MiB).
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    #: Model versions between checkpoints (0: none).
    checkpoint_every: int = 1
    #: Newest checkpoints kept.
    checkpoint_keep: int = 3
    #: Seconds with every client gone before the server gives up (0: never).
    gone_timeout: float = 60.0
    #: Uploads of at least this many bytes are spooled to disk while another is in memory (0:
    #: never).
    spool_bytes: int = 64 << 20
    #: Uploads received in memory at once.
    memory_uploads: int = 1
    #: Seconds an upload may take from its header to its last frame.
    upload_timeout: float = 300.0
    #: Seconds a task may stay outstanding before it expires, heartbeats or not.
    task_timeout: float = 3600.0
    #: Seconds a new connection has to finish its TLS handshake.
    handshake_timeout: float = 10.0

    def __post_init__(self) -> None:
        require(
            address_port(self.address) is not None,
            "address",
            "must be HOST:PORT with a port in [0, 65535] (0: any free port)",
            self.address,
        )
        require(
            self.checkpoint_every >= 0,
            "checkpoint_every",
            "must be >= 0 (0: no checkpoints)",
            self.checkpoint_every,
        )
        require(self.checkpoint_keep >= 1, "checkpoint_keep", "must be >= 1", self.checkpoint_keep)
        require(self.spool_bytes >= 0, "spool_bytes", "must be >= 0 (0: never)", self.spool_bytes)
        require(self.memory_uploads >= 0, "memory_uploads", "must be >= 0", self.memory_uploads)
        require_positive("upload_timeout", self.upload_timeout, " seconds")
        require_positive("handshake_timeout", self.handshake_timeout, " seconds")
        require_positive("task_timeout", self.task_timeout, " seconds")
        require(
            self.gone_timeout >= 0,
            "gone_timeout",
            "must be >= 0 (0: wait forever)",
            self.gone_timeout,
        )
        require(
            self.heartbeat_seconds > 0, "heartbeat_seconds", "must be > 0", self.heartbeat_seconds
        )
        require(
            self.liveness_timeout > self.heartbeat_seconds,
            "liveness_timeout",
            f"must exceed heartbeat_seconds ({self.heartbeat_seconds})",
            self.liveness_timeout,
        )
        require(
            4096 <= self.chunk_bytes <= DEFAULT_CHUNK_BYTES,
            "chunk_bytes",
            "must be in [4096, 2 MiB]",
            self.chunk_bytes,
        )


@dataclass
class DeviceSettings:
    """A deployed client's settings for one kind of device. None of them changes what is
    computed beyond floating-point rounding: the batch size, seeds and sampling are the task's."""

    #: Torch threads on this kind of device (0: the experiment's threads).
    threads: int = 0
    #: float32, or bfloat16 autocast for the forward pass (weights and the wire stay float32).
    dtype: Literal["float32", "bfloat16"] = "float32"
    #: Bytes the client may use on this device (0: no budget).
    memory_budget: int = 0

    def __post_init__(self) -> None:
        require(
            self.threads >= 0, "threads", "must be >= 0 (0: the experiment's threads)", self.threads
        )
        require(
            self.memory_budget >= 0,
            "memory_budget",
            "must be >= 0 bytes (0: no budget)",
            self.memory_budget,
        )


@dataclass
class ClientDevicesConfig:
    """Per-device client settings: `cpu` applies when a client trains on its CPU, `cuda` on a GPU."""

    cpu: DeviceSettings = field(default_factory=DeviceSettings)
    cuda: DeviceSettings = field(default_factory=DeviceSettings)


@dataclass
class ExperimentConfig:
    """A whole experiment, as `fedcore sim` and `fedcore server` run it."""

    #: Seed of everything random: data split, sampling, task seeds, initial model.
    seed: int = 0
    #: Model versions to publish.
    rounds: int = 30
    #: Clients in the federation.
    num_clients: int = 100
    #: Clients training at once (per round, or concurrently for asynchronous strategies).
    clients_per_round: int = 10
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    #: The strategy preset and its options (docs/strategies.md).
    strategy: dict[str, Any] = field(default_factory=lambda: {"name": "fedavg"})
    training: TrainingConfig = field(default_factory=TrainingConfig)
    client_profiles: ProfileConfig = field(default_factory=ProfileConfig)
    simulation: SimulationConfig = field(default_factory=SimulationConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    divergence: DivergenceConfig = field(default_factory=DivergenceConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    deployment: DeploymentConfig = field(default_factory=DeploymentConfig)
    validation: ValidationPolicy = field(default_factory=ValidationPolicy)
    client_devices: ClientDevicesConfig = field(default_factory=ClientDevicesConfig)
    server_data: ServerDataConfig = field(default_factory=ServerDataConfig)
    #: Modules imported before the run (server, simulation workers and clients alike) to
    #: register user techniques, transforms and strategies.
    plugins: list[str] = field(default_factory=list)
    #: Torch threads of each process's own work: the simulation, each pool worker, the server
    #: and each client (unless `client_devices.<kind>.threads` says otherwise). A count that
    #: does not follow the machine's load keeps seeded runs bit for bit (results depend on it).
    threads: int = 1

    def __post_init__(self) -> None:
        require(0 <= self.seed < 2**63, "seed", "must be in [0, 2^63)", self.seed)
        require(self.rounds >= 1, "rounds", "must be >= 1", self.rounds)
        require(self.threads >= 1, "threads", "must be >= 1", self.threads)
        require(self.num_clients >= 1, "num_clients", "must be >= 1", self.num_clients)
        require(
            self.clients_per_round >= 1, "clients_per_round", "must be >= 1", self.clients_per_round
        )
        require(
            self.clients_per_round <= self.num_clients,
            "clients_per_round",
            f"must be <= num_clients ({self.num_clients})",
            self.clients_per_round,
        )
        if self.privacy.mode != "none":
            require(
                self.evaluation.federated_clients == 0,
                "evaluation.federated_clients",
                f"must be 0 under privacy.mode={self.privacy.mode}: clients would send the "
                "loss and accuracy on their hold-outs unnoised",
                self.evaluation.federated_clients,
            )
        if self.privacy.mode in ("local", "central"):
            require(
                self.privacy.delta < 1 / self.num_clients,
                "privacy.delta",
                f"must be below 1 / num_clients ({1 / self.num_clients:.3g}): a larger delta "
                "allows a mechanism that reveals some client's update outright",
                self.privacy.delta,
            )
        if self.privacy.mode == "local":
            self._add_local_privacy()
        if self.privacy.mode == "dpsgd":
            self._add_dpsgd()

    def _add_dpsgd(self) -> None:
        """Train with the dpsgd technique in place of plain SGD, with the privacy settings."""
        require(
            self.training.technique == "sgd",
            "training.technique",
            "must be sgd under privacy.mode=dpsgd, which replaces it with dpsgd (another "
            "technique would train without the privacy)",
            self.training.technique,
        )
        self.training.technique = "dpsgd"
        self.training.options = {
            **self.training.options,
            "max_grad_norm": self.privacy.max_norm,
            "noise_multiplier": self.privacy.noise_multiplier,
            "ghost": float(self.privacy.ghost),
        }

    def _add_local_privacy(self) -> None:
        """Check what local DP needs and append its transform, which must see the final delta."""
        for index, spec in enumerate(self.training.transforms):
            require(
                spec["name"] not in ("ldp", "topk"),
                f"training.transforms[{index}].name",
                "cannot come before privacy.mode=local's noise ('ldp' is added by it; 'topk' "
                "would choose the positions sent from the unnoised delta, which are not private)",
                spec["name"],
            )
        self.training.transforms.append(self.privacy.transform())
