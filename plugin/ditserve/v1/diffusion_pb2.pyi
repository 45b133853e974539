from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ImageFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IMAGE_FORMAT_UNSPECIFIED: _ClassVar[ImageFormat]
    IMAGE_FORMAT_PNG: _ClassVar[ImageFormat]
    IMAGE_FORMAT_RAW_F32: _ClassVar[ImageFormat]
IMAGE_FORMAT_UNSPECIFIED: ImageFormat
IMAGE_FORMAT_PNG: ImageFormat
IMAGE_FORMAT_RAW_F32: ImageFormat

class Strategy(_message.Message):
    __slots__ = ("name", "fields")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    fields: _struct_pb2.Struct
    def __init__(self, name: _Optional[str] = ..., fields: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("model", "prompt", "class_label", "steps", "guidance_scale", "seed", "num_images", "height", "width", "format", "sampler", "preview_every", "cache", "init_image", "mask", "strength", "lora", "lora_scale", "approx_cache", "num_frames")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    CLASS_LABEL_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_SCALE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    NUM_IMAGES_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    SAMPLER_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_EVERY_FIELD_NUMBER: _ClassVar[int]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    INIT_IMAGE_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    STRENGTH_FIELD_NUMBER: _ClassVar[int]
    LORA_FIELD_NUMBER: _ClassVar[int]
    LORA_SCALE_FIELD_NUMBER: _ClassVar[int]
    APPROX_CACHE_FIELD_NUMBER: _ClassVar[int]
    NUM_FRAMES_FIELD_NUMBER: _ClassVar[int]
    model: str
    prompt: str
    class_label: int
    steps: int
    guidance_scale: float
    seed: int
    num_images: int
    height: int
    width: int
    format: ImageFormat
    sampler: Strategy
    preview_every: int
    cache: Strategy
    init_image: bytes
    mask: bytes
    strength: float
    lora: str
    lora_scale: float
    approx_cache: bool
    num_frames: int
    def __init__(self, model: _Optional[str] = ..., prompt: _Optional[str] = ..., class_label: _Optional[int] = ..., steps: _Optional[int] = ..., guidance_scale: _Optional[float] = ..., seed: _Optional[int] = ..., num_images: _Optional[int] = ..., height: _Optional[int] = ..., width: _Optional[int] = ..., format: _Optional[_Union[ImageFormat, str]] = ..., sampler: _Optional[_Union[Strategy, _Mapping]] = ..., preview_every: _Optional[int] = ..., cache: _Optional[_Union[Strategy, _Mapping]] = ..., init_image: _Optional[bytes] = ..., mask: _Optional[bytes] = ..., strength: _Optional[float] = ..., lora: _Optional[str] = ..., lora_scale: _Optional[float] = ..., approx_cache: _Optional[bool] = ..., num_frames: _Optional[int] = ...) -> None: ...

class Image(_message.Message):
    __slots__ = ("data", "mime_type", "seed", "channels", "height", "width")
    DATA_FIELD_NUMBER: _ClassVar[int]
    MIME_TYPE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    mime_type: str
    seed: int
    channels: int
    height: int
    width: int
    def __init__(self, data: _Optional[bytes] = ..., mime_type: _Optional[str] = ..., seed: _Optional[int] = ..., channels: _Optional[int] = ..., height: _Optional[int] = ..., width: _Optional[int] = ...) -> None: ...

class Stats(_message.Message):
    __slots__ = ("steps", "batch_size", "model_evaluations", "block_evaluations", "block_evaluations_full", "seconds", "resumed_from", "attention_evaluations", "attention_evaluations_full", "token_evaluations", "token_evaluations_full")
    class SecondsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    STEPS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MODEL_EVALUATIONS_FIELD_NUMBER: _ClassVar[int]
    BLOCK_EVALUATIONS_FIELD_NUMBER: _ClassVar[int]
    BLOCK_EVALUATIONS_FULL_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    RESUMED_FROM_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_EVALUATIONS_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_EVALUATIONS_FULL_FIELD_NUMBER: _ClassVar[int]
    TOKEN_EVALUATIONS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_EVALUATIONS_FULL_FIELD_NUMBER: _ClassVar[int]
    steps: int
    batch_size: int
    model_evaluations: int
    block_evaluations: int
    block_evaluations_full: int
    seconds: _containers.ScalarMap[str, float]
    resumed_from: int
    attention_evaluations: int
    attention_evaluations_full: int
    token_evaluations: int
    token_evaluations_full: int
    def __init__(self, steps: _Optional[int] = ..., batch_size: _Optional[int] = ..., model_evaluations: _Optional[int] = ..., block_evaluations: _Optional[int] = ..., block_evaluations_full: _Optional[int] = ..., seconds: _Optional[_Mapping[str, float]] = ..., resumed_from: _Optional[int] = ..., attention_evaluations: _Optional[int] = ..., attention_evaluations_full: _Optional[int] = ..., token_evaluations: _Optional[int] = ..., token_evaluations_full: _Optional[int] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("model", "images", "stats")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    model: str
    images: _containers.RepeatedCompositeFieldContainer[Image]
    stats: Stats
    def __init__(self, model: _Optional[str] = ..., images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ..., stats: _Optional[_Union[Stats, _Mapping]] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("step", "total", "elapsed_s", "previews")
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_S_FIELD_NUMBER: _ClassVar[int]
    PREVIEWS_FIELD_NUMBER: _ClassVar[int]
    step: int
    total: int
    elapsed_s: float
    previews: _containers.RepeatedCompositeFieldContainer[Image]
    def __init__(self, step: _Optional[int] = ..., total: _Optional[int] = ..., elapsed_s: _Optional[float] = ..., previews: _Optional[_Iterable[_Union[Image, _Mapping]]] = ...) -> None: ...

class GenerateEvent(_message.Message):
    __slots__ = ("progress", "result")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    progress: Progress
    result: GenerateResponse
    def __init__(self, progress: _Optional[_Union[Progress, _Mapping]] = ..., result: _Optional[_Union[GenerateResponse, _Mapping]] = ...) -> None: ...

class VideoFrame(_message.Message):
    __slots__ = ("video", "index", "image")
    VIDEO_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    video: int
    index: int
    image: Image
    def __init__(self, video: _Optional[int] = ..., index: _Optional[int] = ..., image: _Optional[_Union[Image, _Mapping]] = ...) -> None: ...

class VideoDone(_message.Message):
    __slots__ = ("model", "frames", "seeds", "stats")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    SEEDS_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    model: str
    frames: int
    seeds: _containers.RepeatedScalarFieldContainer[int]
    stats: Stats
    def __init__(self, model: _Optional[str] = ..., frames: _Optional[int] = ..., seeds: _Optional[_Iterable[int]] = ..., stats: _Optional[_Union[Stats, _Mapping]] = ...) -> None: ...

class VideoEvent(_message.Message):
    __slots__ = ("progress", "frame", "done")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    progress: Progress
    frame: VideoFrame
    done: VideoDone
    def __init__(self, progress: _Optional[_Union[Progress, _Mapping]] = ..., frame: _Optional[_Union[VideoFrame, _Mapping]] = ..., done: _Optional[_Union[VideoDone, _Mapping]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_steps", "max_batch", "max_side", "max_prompt_chars", "max_queue", "timeout_s", "allow_overrides", "overrides", "max_frames")
    MAX_STEPS_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    MAX_SIDE_FIELD_NUMBER: _ClassVar[int]
    MAX_PROMPT_CHARS_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    ALLOW_OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    MAX_FRAMES_FIELD_NUMBER: _ClassVar[int]
    max_steps: int
    max_batch: int
    max_side: int
    max_prompt_chars: int
    max_queue: int
    timeout_s: float
    allow_overrides: bool
    overrides: _containers.RepeatedCompositeFieldContainer[Overridable]
    max_frames: int
    def __init__(self, max_steps: _Optional[int] = ..., max_batch: _Optional[int] = ..., max_side: _Optional[int] = ..., max_prompt_chars: _Optional[int] = ..., max_queue: _Optional[int] = ..., timeout_s: _Optional[float] = ..., allow_overrides: _Optional[bool] = ..., overrides: _Optional[_Iterable[_Union[Overridable, _Mapping]]] = ..., max_frames: _Optional[int] = ...) -> None: ...

class Overridable(_message.Message):
    __slots__ = ("section", "names")
    SECTION_FIELD_NUMBER: _ClassVar[int]
    NAMES_FIELD_NUMBER: _ClassVar[int]
    section: str
    names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, section: _Optional[str] = ..., names: _Optional[_Iterable[str]] = ...) -> None: ...

class StrategyField(_message.Message):
    __slots__ = ("name", "type", "default_json", "doc")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_JSON_FIELD_NUMBER: _ClassVar[int]
    DOC_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    default_json: str
    doc: str
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., default_json: _Optional[str] = ..., doc: _Optional[str] = ...) -> None: ...

class StrategyInfo(_message.Message):
    __slots__ = ("kind", "name", "about", "active", "fields")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ABOUT_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    kind: str
    name: str
    about: str
    active: bool
    fields: _containers.RepeatedCompositeFieldContainer[StrategyField]
    def __init__(self, kind: _Optional[str] = ..., name: _Optional[str] = ..., about: _Optional[str] = ..., active: _Optional[bool] = ..., fields: _Optional[_Iterable[_Union[StrategyField, _Mapping]]] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "family", "conditioning", "labels", "default_size", "limits", "plan", "strategies", "loras", "default_frames")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: str
        def __init__(self, key: _Optional[int] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    CONDITIONING_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_SIZE_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    STRATEGIES_FIELD_NUMBER: _ClassVar[int]
    LORAS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_FRAMES_FIELD_NUMBER: _ClassVar[int]
    name: str
    family: str
    conditioning: str
    labels: _containers.ScalarMap[int, str]
    default_size: _containers.RepeatedScalarFieldContainer[int]
    limits: Limits
    plan: _struct_pb2.Struct
    strategies: _containers.RepeatedCompositeFieldContainer[StrategyInfo]
    loras: _containers.RepeatedScalarFieldContainer[str]
    default_frames: int
    def __init__(self, name: _Optional[str] = ..., family: _Optional[str] = ..., conditioning: _Optional[str] = ..., labels: _Optional[_Mapping[int, str]] = ..., default_size: _Optional[_Iterable[int]] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., plan: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., strategies: _Optional[_Iterable[_Union[StrategyInfo, _Mapping]]] = ..., loras: _Optional[_Iterable[str]] = ..., default_frames: _Optional[int] = ...) -> None: ...
