from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DeviceProfile(_message.Message):
    __slots__ = ["architecture", "cores", "device_memory_bytes", "device_name", "device_type", "libraries", "memory_bytes", "step_seconds"]
    class LibrariesEntry(_message.Message):
        __slots__ = ["key", "value"]
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    CORES_FIELD_NUMBER: _ClassVar[int]
    DEVICE_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    DEVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    DEVICE_TYPE_FIELD_NUMBER: _ClassVar[int]
    LIBRARIES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    STEP_SECONDS_FIELD_NUMBER: _ClassVar[int]
    architecture: str
    cores: int
    device_memory_bytes: int
    device_name: str
    device_type: str
    libraries: _containers.ScalarMap[str, str]
    memory_bytes: int
    step_seconds: float
    def __init__(self, architecture: _Optional[str] = ..., device_type: _Optional[str] = ..., device_name: _Optional[str] = ..., cores: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., device_memory_bytes: _Optional[int] = ..., step_seconds: _Optional[float] = ..., libraries: _Optional[_Mapping[str, str]] = ...) -> None: ...

class DownloadRequest(_message.Message):
    __slots__ = ["chunk_bytes", "client_id", "session", "task_id"]
    CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    chunk_bytes: int
    client_id: str
    session: str
    task_id: str
    def __init__(self, client_id: _Optional[str] = ..., session: _Optional[str] = ..., task_id: _Optional[str] = ..., chunk_bytes: _Optional[int] = ...) -> None: ...

class HeartbeatReply(_message.Message):
    __slots__ = ["done", "known"]
    DONE_FIELD_NUMBER: _ClassVar[int]
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    done: bool
    known: bool
    def __init__(self, known: bool = ..., done: bool = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ["client_id", "session"]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    session: str
    def __init__(self, client_id: _Optional[str] = ..., session: _Optional[str] = ...) -> None: ...

class JoinReply(_message.Message):
    __slots__ = ["client_number", "heartbeat_seconds", "model_spec_json", "session"]
    CLIENT_NUMBER_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MODEL_SPEC_JSON_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    client_number: int
    heartbeat_seconds: float
    model_spec_json: str
    session: str
    def __init__(self, session: _Optional[str] = ..., heartbeat_seconds: _Optional[float] = ..., model_spec_json: _Optional[str] = ..., client_number: _Optional[int] = ...) -> None: ...

class JoinRequest(_message.Message):
    __slots__ = ["client_id", "num_examples", "profile"]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    num_examples: int
    profile: DeviceProfile
    def __init__(self, client_id: _Optional[str] = ..., profile: _Optional[_Union[DeviceProfile, _Mapping]] = ..., num_examples: _Optional[int] = ...) -> None: ...

class LeaveReply(_message.Message):
    __slots__ = []
    def __init__(self) -> None: ...

class LeaveRequest(_message.Message):
    __slots__ = ["client_id", "session"]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    session: str
    def __init__(self, client_id: _Optional[str] = ..., session: _Optional[str] = ...) -> None: ...

class TaskReply(_message.Message):
    __slots__ = ["deadline_seconds", "download", "extras", "hyper", "kind", "local_steps", "reason", "seed", "status", "task_id", "transforms", "version"]
    class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = []
    class HyperEntry(_message.Message):
        __slots__ = ["key", "value"]
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    DEADLINE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DONE: TaskReply.Status
    DOWNLOAD_FIELD_NUMBER: _ClassVar[int]
    EXTRAS_FIELD_NUMBER: _ClassVar[int]
    HYPER_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    LOCAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    TASK: TaskReply.Status
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    TRANSFORMS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    WAIT: TaskReply.Status
    deadline_seconds: float
    download: str
    extras: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    hyper: _containers.ScalarMap[str, float]
    kind: str
    local_steps: int
    reason: str
    seed: int
    status: TaskReply.Status
    task_id: str
    transforms: _containers.RepeatedCompositeFieldContainer[Transform]
    version: int
    def __init__(self, status: _Optional[_Union[TaskReply.Status, str]] = ..., task_id: _Optional[str] = ..., version: _Optional[int] = ..., kind: _Optional[str] = ..., local_steps: _Optional[int] = ..., hyper: _Optional[_Mapping[str, float]] = ..., seed: _Optional[int] = ..., deadline_seconds: _Optional[float] = ..., extras: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ..., transforms: _Optional[_Iterable[_Union[Transform, _Mapping]]] = ..., download: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class TaskRequest(_message.Message):
    __slots__ = ["client_id", "held_version", "holds_model", "session", "wait_seconds"]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    HELD_VERSION_FIELD_NUMBER: _ClassVar[int]
    HOLDS_MODEL_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    held_version: int
    holds_model: bool
    session: str
    wait_seconds: float
    def __init__(self, client_id: _Optional[str] = ..., session: _Optional[str] = ..., wait_seconds: _Optional[float] = ..., holds_model: bool = ..., held_version: _Optional[int] = ...) -> None: ...

class TensorChunk(_message.Message):
    __slots__ = ["frame"]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    frame: bytes
    def __init__(self, frame: _Optional[bytes] = ...) -> None: ...

class TensorSpec(_message.Message):
    __slots__ = ["dtype", "name", "numel"]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    NUMEL_FIELD_NUMBER: _ClassVar[int]
    dtype: str
    name: str
    numel: int
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ..., numel: _Optional[int] = ...) -> None: ...

class Transform(_message.Message):
    __slots__ = ["name", "options"]
    class OptionsEntry(_message.Message):
        __slots__ = ["key", "value"]
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    options: _containers.ScalarMap[str, float]
    def __init__(self, name: _Optional[str] = ..., options: _Optional[_Mapping[str, float]] = ...) -> None: ...

class UploadChunk(_message.Message):
    __slots__ = ["frame", "header"]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    HEADER_FIELD_NUMBER: _ClassVar[int]
    frame: bytes
    header: UploadHeader
    def __init__(self, header: _Optional[_Union[UploadHeader, _Mapping]] = ..., frame: _Optional[bytes] = ...) -> None: ...

class UploadHeader(_message.Message):
    __slots__ = ["base_version", "client_id", "compute_seconds", "count", "encoding", "local_steps", "metrics", "num_examples", "payload", "session", "task_id", "wall_seconds"]
    class MetricsEntry(_message.Message):
        __slots__ = ["key", "value"]
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    LOCAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    WALL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    base_version: int
    client_id: str
    compute_seconds: float
    count: int
    encoding: str
    local_steps: int
    metrics: _containers.ScalarMap[str, float]
    num_examples: int
    payload: str
    session: str
    task_id: str
    wall_seconds: float
    def __init__(self, client_id: _Optional[str] = ..., session: _Optional[str] = ..., task_id: _Optional[str] = ..., base_version: _Optional[int] = ..., num_examples: _Optional[int] = ..., local_steps: _Optional[int] = ..., compute_seconds: _Optional[float] = ..., wall_seconds: _Optional[float] = ..., metrics: _Optional[_Mapping[str, float]] = ..., payload: _Optional[str] = ..., count: _Optional[int] = ..., encoding: _Optional[str] = ...) -> None: ...

class UploadReply(_message.Message):
    __slots__ = ["accepted", "reason"]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    reason: str
    def __init__(self, accepted: bool = ..., reason: _Optional[str] = ...) -> None: ...
