from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CommonParams(_message.Message):
    __slots__ = ("prompt", "negative_prompt", "model", "seed", "steps", "guidance", "guidance_2", "width", "height", "frames", "fps", "out", "first_frame", "compression", "overwrite", "frame_range", "display_transform", "offload", "lora")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_PROMPT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_2_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    OUT_FIELD_NUMBER: _ClassVar[int]
    FIRST_FRAME_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    OVERWRITE_FIELD_NUMBER: _ClassVar[int]
    FRAME_RANGE_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_TRANSFORM_FIELD_NUMBER: _ClassVar[int]
    OFFLOAD_FIELD_NUMBER: _ClassVar[int]
    LORA_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    negative_prompt: str
    model: str
    seed: int
    steps: int
    guidance: float
    guidance_2: float
    width: int
    height: int
    frames: int
    fps: float
    out: str
    first_frame: int
    compression: str
    overwrite: bool
    frame_range: str
    display_transform: str
    offload: str
    lora: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, prompt: _Optional[str] = ..., negative_prompt: _Optional[str] = ..., model: _Optional[str] = ..., seed: _Optional[int] = ..., steps: _Optional[int] = ..., guidance: _Optional[float] = ..., guidance_2: _Optional[float] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., frames: _Optional[int] = ..., fps: _Optional[float] = ..., out: _Optional[str] = ..., first_frame: _Optional[int] = ..., compression: _Optional[str] = ..., overwrite: _Optional[bool] = ..., frame_range: _Optional[str] = ..., display_transform: _Optional[str] = ..., offload: _Optional[str] = ..., lora: _Optional[_Iterable[str]] = ...) -> None: ...

class ImageParams(_message.Message):
    __slots__ = ("refiner", "refiner_split")
    REFINER_FIELD_NUMBER: _ClassVar[int]
    REFINER_SPLIT_FIELD_NUMBER: _ClassVar[int]
    refiner: str
    refiner_split: float
    def __init__(self, refiner: _Optional[str] = ..., refiner_split: _Optional[float] = ...) -> None: ...

class UpscaleParams(_message.Message):
    __slots__ = ("input", "scale", "strength", "cosine_scale", "dilate_tau", "fast", "stages", "mode", "vae_tile", "lora", "latent_resize", "matte_cosine_scale", "input_colorspace")
    INPUT_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    STRENGTH_FIELD_NUMBER: _ClassVar[int]
    COSINE_SCALE_FIELD_NUMBER: _ClassVar[int]
    DILATE_TAU_FIELD_NUMBER: _ClassVar[int]
    FAST_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    VAE_TILE_FIELD_NUMBER: _ClassVar[int]
    LORA_FIELD_NUMBER: _ClassVar[int]
    LATENT_RESIZE_FIELD_NUMBER: _ClassVar[int]
    MATTE_COSINE_SCALE_FIELD_NUMBER: _ClassVar[int]
    INPUT_COLORSPACE_FIELD_NUMBER: _ClassVar[int]
    input: str
    scale: float
    strength: float
    cosine_scale: float
    dilate_tau: int
    fast: bool
    stages: int
    mode: str
    vae_tile: int
    lora: str
    latent_resize: bool
    matte_cosine_scale: float
    input_colorspace: str
    def __init__(self, input: _Optional[str] = ..., scale: _Optional[float] = ..., strength: _Optional[float] = ..., cosine_scale: _Optional[float] = ..., dilate_tau: _Optional[int] = ..., fast: _Optional[bool] = ..., stages: _Optional[int] = ..., mode: _Optional[str] = ..., vae_tile: _Optional[int] = ..., lora: _Optional[str] = ..., latent_resize: _Optional[bool] = ..., matte_cosine_scale: _Optional[float] = ..., input_colorspace: _Optional[str] = ...) -> None: ...

class PanoramaParams(_message.Message):
    __slots__ = ("projection", "loop", "input", "guidance_scale_down", "early_overlap", "band_prompts", "input_colorspace", "keep_first_frame", "window_order", "view_order", "view_batch")
    PROJECTION_FIELD_NUMBER: _ClassVar[int]
    LOOP_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_SCALE_DOWN_FIELD_NUMBER: _ClassVar[int]
    EARLY_OVERLAP_FIELD_NUMBER: _ClassVar[int]
    BAND_PROMPTS_FIELD_NUMBER: _ClassVar[int]
    INPUT_COLORSPACE_FIELD_NUMBER: _ClassVar[int]
    KEEP_FIRST_FRAME_FIELD_NUMBER: _ClassVar[int]
    WINDOW_ORDER_FIELD_NUMBER: _ClassVar[int]
    VIEW_ORDER_FIELD_NUMBER: _ClassVar[int]
    VIEW_BATCH_FIELD_NUMBER: _ClassVar[int]
    projection: str
    loop: bool
    input: str
    guidance_scale_down: float
    early_overlap: bool
    band_prompts: _containers.RepeatedScalarFieldContainer[str]
    input_colorspace: str
    keep_first_frame: bool
    window_order: str
    view_order: str
    view_batch: int
    def __init__(self, projection: _Optional[str] = ..., loop: _Optional[bool] = ..., input: _Optional[str] = ..., guidance_scale_down: _Optional[float] = ..., early_overlap: _Optional[bool] = ..., band_prompts: _Optional[_Iterable[str]] = ..., input_colorspace: _Optional[str] = ..., keep_first_frame: _Optional[bool] = ..., window_order: _Optional[str] = ..., view_order: _Optional[str] = ..., view_batch: _Optional[int] = ...) -> None: ...

class TrajectoryParams(_message.Message):
    __slots__ = ("trajectory", "trajectory_json", "tora_sampler", "dynamic_cfg", "flow_latents", "flow_kernel")
    TRAJECTORY_FIELD_NUMBER: _ClassVar[int]
    TRAJECTORY_JSON_FIELD_NUMBER: _ClassVar[int]
    TORA_SAMPLER_FIELD_NUMBER: _ClassVar[int]
    DYNAMIC_CFG_FIELD_NUMBER: _ClassVar[int]
    FLOW_LATENTS_FIELD_NUMBER: _ClassVar[int]
    FLOW_KERNEL_FIELD_NUMBER: _ClassVar[int]
    trajectory: str
    trajectory_json: str
    tora_sampler: str
    dynamic_cfg: bool
    flow_latents: str
    flow_kernel: str
    def __init__(self, trajectory: _Optional[str] = ..., trajectory_json: _Optional[str] = ..., tora_sampler: _Optional[str] = ..., dynamic_cfg: _Optional[bool] = ..., flow_latents: _Optional[str] = ..., flow_kernel: _Optional[str] = ...) -> None: ...

class StoryParams(_message.Message):
    __slots__ = ("story", "story_yaml", "shots", "video_model", "stage", "keyframe_motion", "sparsectrl")
    STORY_FIELD_NUMBER: _ClassVar[int]
    STORY_YAML_FIELD_NUMBER: _ClassVar[int]
    SHOTS_FIELD_NUMBER: _ClassVar[int]
    VIDEO_MODEL_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    KEYFRAME_MOTION_FIELD_NUMBER: _ClassVar[int]
    SPARSECTRL_FIELD_NUMBER: _ClassVar[int]
    story: str
    story_yaml: str
    shots: _containers.RepeatedScalarFieldContainer[str]
    video_model: str
    stage: str
    keyframe_motion: str
    sparsectrl: str
    def __init__(self, story: _Optional[str] = ..., story_yaml: _Optional[str] = ..., shots: _Optional[_Iterable[str]] = ..., video_model: _Optional[str] = ..., stage: _Optional[str] = ..., keyframe_motion: _Optional[str] = ..., sparsectrl: _Optional[str] = ...) -> None: ...

class JobRequest(_message.Message):
    __slots__ = ("job_id", "pipeline", "common", "image", "upscale", "panorama", "trajectory", "story", "client", "values")
    class ValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    PIPELINE_FIELD_NUMBER: _ClassVar[int]
    COMMON_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    UPSCALE_FIELD_NUMBER: _ClassVar[int]
    PANORAMA_FIELD_NUMBER: _ClassVar[int]
    TRAJECTORY_FIELD_NUMBER: _ClassVar[int]
    STORY_FIELD_NUMBER: _ClassVar[int]
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    pipeline: str
    common: CommonParams
    image: ImageParams
    upscale: UpscaleParams
    panorama: PanoramaParams
    trajectory: TrajectoryParams
    story: StoryParams
    client: str
    values: _containers.ScalarMap[str, str]
    def __init__(self, job_id: _Optional[str] = ..., pipeline: _Optional[str] = ..., common: _Optional[_Union[CommonParams, _Mapping]] = ..., image: _Optional[_Union[ImageParams, _Mapping]] = ..., upscale: _Optional[_Union[UpscaleParams, _Mapping]] = ..., panorama: _Optional[_Union[PanoramaParams, _Mapping]] = ..., trajectory: _Optional[_Union[TrajectoryParams, _Mapping]] = ..., story: _Optional[_Union[StoryParams, _Mapping]] = ..., client: _Optional[str] = ..., values: _Optional[_Mapping[str, str]] = ...) -> None: ...

class JobTicket(_message.Message):
    __slots__ = ("job_id", "queue_position", "existing")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    QUEUE_POSITION_FIELD_NUMBER: _ClassVar[int]
    EXISTING_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    queue_position: int
    existing: bool
    def __init__(self, job_id: _Optional[str] = ..., queue_position: _Optional[int] = ..., existing: _Optional[bool] = ...) -> None: ...

class ParamSpec(_message.Message):
    __slots__ = ("name", "type", "default_json", "minimum", "maximum", "choices", "help", "group", "label", "step", "families", "kinds")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_JSON_FIELD_NUMBER: _ClassVar[int]
    MINIMUM_FIELD_NUMBER: _ClassVar[int]
    MAXIMUM_FIELD_NUMBER: _ClassVar[int]
    CHOICES_FIELD_NUMBER: _ClassVar[int]
    HELP_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    FAMILIES_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    default_json: str
    minimum: float
    maximum: float
    choices: _containers.RepeatedScalarFieldContainer[str]
    help: str
    group: str
    label: str
    step: float
    families: _containers.RepeatedScalarFieldContainer[str]
    kinds: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., default_json: _Optional[str] = ..., minimum: _Optional[float] = ..., maximum: _Optional[float] = ..., choices: _Optional[_Iterable[str]] = ..., help: _Optional[str] = ..., group: _Optional[str] = ..., label: _Optional[str] = ..., step: _Optional[float] = ..., families: _Optional[_Iterable[str]] = ..., kinds: _Optional[_Iterable[str]] = ...) -> None: ...

class PipelineInfo(_message.Message):
    __slots__ = ("name", "description", "params", "families", "output_is_folder")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    FAMILIES_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_IS_FOLDER_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    params: _containers.RepeatedCompositeFieldContainer[ParamSpec]
    families: _containers.RepeatedScalarFieldContainer[str]
    output_is_folder: bool
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., params: _Optional[_Iterable[_Union[ParamSpec, _Mapping]]] = ..., families: _Optional[_Iterable[str]] = ..., output_is_folder: _Optional[bool] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("id", "family", "source", "path", "loaded", "native_width", "native_height", "native_frames", "description", "kind")
    ID_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    LOADED_FIELD_NUMBER: _ClassVar[int]
    NATIVE_WIDTH_FIELD_NUMBER: _ClassVar[int]
    NATIVE_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    NATIVE_FRAMES_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    id: str
    family: str
    source: str
    path: str
    loaded: bool
    native_width: int
    native_height: int
    native_frames: int
    description: str
    kind: str
    def __init__(self, id: _Optional[str] = ..., family: _Optional[str] = ..., source: _Optional[str] = ..., path: _Optional[str] = ..., loaded: _Optional[bool] = ..., native_width: _Optional[int] = ..., native_height: _Optional[int] = ..., native_frames: _Optional[int] = ..., description: _Optional[str] = ..., kind: _Optional[str] = ...) -> None: ...

class DeviceInfo(_message.Message):
    __slots__ = ("name", "kind", "total_memory", "memory_budget", "device_memory")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MEMORY_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BUDGET_FIELD_NUMBER: _ClassVar[int]
    DEVICE_MEMORY_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: str
    total_memory: int
    memory_budget: int
    device_memory: int
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ..., total_memory: _Optional[int] = ..., memory_budget: _Optional[int] = ..., device_memory: _Optional[int] = ...) -> None: ...

class GetCapabilitiesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Capabilities(_message.Message):
    __slots__ = ("server_version", "device", "pipelines", "models", "max_width", "max_height", "protocol_version", "addons", "model_notes")
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    PIPELINES_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    MAX_WIDTH_FIELD_NUMBER: _ClassVar[int]
    MAX_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ADDONS_FIELD_NUMBER: _ClassVar[int]
    MODEL_NOTES_FIELD_NUMBER: _ClassVar[int]
    server_version: str
    device: DeviceInfo
    pipelines: _containers.RepeatedCompositeFieldContainer[PipelineInfo]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    max_width: int
    max_height: int
    protocol_version: int
    addons: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    model_notes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, server_version: _Optional[str] = ..., device: _Optional[_Union[DeviceInfo, _Mapping]] = ..., pipelines: _Optional[_Iterable[_Union[PipelineInfo, _Mapping]]] = ..., models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ..., max_width: _Optional[int] = ..., max_height: _Optional[int] = ..., protocol_version: _Optional[int] = ..., addons: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ..., model_notes: _Optional[_Iterable[str]] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("job_id", "after_seq")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    after_seq: int
    def __init__(self, job_id: _Optional[str] = ..., after_seq: _Optional[int] = ...) -> None: ...

class Queued(_message.Message):
    __slots__ = ("position",)
    POSITION_FIELD_NUMBER: _ClassVar[int]
    position: int
    def __init__(self, position: _Optional[int] = ...) -> None: ...

class Started(_message.Message):
    __slots__ = ("model", "seed", "device")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    model: str
    seed: int
    device: str
    def __init__(self, model: _Optional[str] = ..., seed: _Optional[int] = ..., device: _Optional[str] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("stage", "step", "total", "fraction", "eta_seconds")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    ETA_SECONDS_FIELD_NUMBER: _ClassVar[int]
    stage: str
    step: int
    total: int
    fraction: float
    eta_seconds: float
    def __init__(self, stage: _Optional[str] = ..., step: _Optional[int] = ..., total: _Optional[int] = ..., fraction: _Optional[float] = ..., eta_seconds: _Optional[float] = ...) -> None: ...

class Preview(_message.Message):
    __slots__ = ("frame", "png", "width", "height")
    FRAME_FIELD_NUMBER: _ClassVar[int]
    PNG_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    frame: int
    png: bytes
    width: int
    height: int
    def __init__(self, frame: _Optional[int] = ..., png: _Optional[bytes] = ..., width: _Optional[int] = ..., height: _Optional[int] = ...) -> None: ...

class FrameWritten(_message.Message):
    __slots__ = ("frame", "path", "sequence")
    FRAME_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    frame: int
    path: str
    sequence: str
    def __init__(self, frame: _Optional[int] = ..., path: _Optional[str] = ..., sequence: _Optional[str] = ...) -> None: ...

class Completed(_message.Message):
    __slots__ = ("outputs", "summary")
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    outputs: _containers.RepeatedScalarFieldContainer[str]
    summary: str
    def __init__(self, outputs: _Optional[_Iterable[str]] = ..., summary: _Optional[str] = ...) -> None: ...

class Failed(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class Cancelled(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class Log(_message.Message):
    __slots__ = ("level", "message")
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    level: str
    message: str
    def __init__(self, level: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("job_id", "seq", "time", "queued", "started", "progress", "preview", "frame_written", "completed", "failed", "cancelled", "log")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_FIELD_NUMBER: _ClassVar[int]
    FRAME_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    LOG_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    seq: int
    time: float
    queued: Queued
    started: Started
    progress: Progress
    preview: Preview
    frame_written: FrameWritten
    completed: Completed
    failed: Failed
    cancelled: Cancelled
    log: Log
    def __init__(self, job_id: _Optional[str] = ..., seq: _Optional[int] = ..., time: _Optional[float] = ..., queued: _Optional[_Union[Queued, _Mapping]] = ..., started: _Optional[_Union[Started, _Mapping]] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., preview: _Optional[_Union[Preview, _Mapping]] = ..., frame_written: _Optional[_Union[FrameWritten, _Mapping]] = ..., completed: _Optional[_Union[Completed, _Mapping]] = ..., failed: _Optional[_Union[Failed, _Mapping]] = ..., cancelled: _Optional[_Union[Cancelled, _Mapping]] = ..., log: _Optional[_Union[Log, _Mapping]] = ...) -> None: ...

class CancelRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class CancelReply(_message.Message):
    __slots__ = ("cancelled", "state")
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    cancelled: bool
    state: str
    def __init__(self, cancelled: _Optional[bool] = ..., state: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class JobSummary(_message.Message):
    __slots__ = ("job_id", "pipeline", "state", "fraction", "prompt", "submitted", "client", "outputs", "last_seq", "outputs_omitted")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    PIPELINE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_FIELD_NUMBER: _ClassVar[int]
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_OMITTED_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    pipeline: str
    state: str
    fraction: float
    prompt: str
    submitted: float
    client: str
    outputs: _containers.RepeatedScalarFieldContainer[str]
    last_seq: int
    outputs_omitted: int
    def __init__(self, job_id: _Optional[str] = ..., pipeline: _Optional[str] = ..., state: _Optional[str] = ..., fraction: _Optional[float] = ..., prompt: _Optional[str] = ..., submitted: _Optional[float] = ..., client: _Optional[str] = ..., outputs: _Optional[_Iterable[str]] = ..., last_seq: _Optional[int] = ..., outputs_omitted: _Optional[int] = ...) -> None: ...

class JobList(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[JobSummary]
    def __init__(self, jobs: _Optional[_Iterable[_Union[JobSummary, _Mapping]]] = ...) -> None: ...

class UploadChunk(_message.Message):
    __slots__ = ("asset_id", "filename", "data")
    ASSET_ID_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    asset_id: str
    filename: str
    data: bytes
    def __init__(self, asset_id: _Optional[str] = ..., filename: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class UploadReply(_message.Message):
    __slots__ = ("asset_id", "path", "size")
    ASSET_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    asset_id: str
    path: str
    size: int
    def __init__(self, asset_id: _Optional[str] = ..., path: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class DownloadRequest(_message.Message):
    __slots__ = ("path",)
    PATH_FIELD_NUMBER: _ClassVar[int]
    path: str
    def __init__(self, path: _Optional[str] = ...) -> None: ...

class FileChunk(_message.Message):
    __slots__ = ("data", "offset", "total")
    DATA_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    offset: int
    total: int
    def __init__(self, data: _Optional[bytes] = ..., offset: _Optional[int] = ..., total: _Optional[int] = ...) -> None: ...

class ReorderRequest(_message.Message):
    __slots__ = ("job_id", "position")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    position: int
    def __init__(self, job_id: _Optional[str] = ..., position: _Optional[int] = ...) -> None: ...

class ReorderReply(_message.Message):
    __slots__ = ("position", "queued")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    position: int
    queued: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, position: _Optional[int] = ..., queued: _Optional[_Iterable[str]] = ...) -> None: ...
