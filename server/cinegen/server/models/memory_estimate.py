"""How much device memory a job needs at its peak, from the model's architecture and the request (pure).

Peak = max over the job's phases (text encoding, denoising, decoding) of the weights on the device
in that phase plus the phase's activations, plus a margin for the allocator and library workspaces.

Weights per `--offload` mode: none keeps every component resident; model (diffusers'
`enable_model_cpu_offload`) has one component on the device at a time, counted here with the VAE
as well while denoising, because the adapters call the VAE out of diffusers' chain order (plate
encode, cascade stages) and the chain then leaves it resident; sequential has one leaf module at a
time (twice the largest, for the one being fetched). A model a job adds beside its main one says in which
phases model offload leaves it on the device (`Component.phases`): the SDXL refiner's UNet, for one,
goes back to CPU memory once its part is done, and the base's before it starts (`Component.turns_with`).

Activations are counted in units of the largest feature map, with multipliers measured on the tiny
models of each family by the live-tensor probe (tests/test_memory_estimate.py checks the estimate
stays between 1x and 2.5x of the measured peak there), and the structure of the real configs:
- UNet (SD, SDXL, AnimateDiff): B·N0·C0 bytes (B = rows × frames × CFG, N0 latent pixels, C0 the
  first block's channels) × (UNET_WORK + the skip connections the down path keeps, from the
  config); AnimateDiff's motion modules add MOTION_WORK. Attention through fused SDPA (flash or
  memory-efficient): no logit matrix. A second UNet on the same latent (the SDXL refiner) counts at
  the larger of the two; a ControlNet (SparseCtrl) adds its residuals, held across the UNet call:
  its own down path's skips.
- DiT (Wan, CogVideoX): tokens × (DIT_WIDTH_WORK·D + 2·FFN) per forward, plus the text tokens'
  states; Wan's blocks keep their residual and norms in float32, so its D term is counted at 4
  bytes. Wan runs the conditional and unconditional passes one after the other (batch 1);
  CogVideoX batches them (batch 2) and attends over text and video tokens jointly.
- VAE decode: frames × H × W × C0 bytes of the decoder's last level × a multiplier (AutoencoderKL
  KL_DECODE; Wan's causal VAE streams one latent frame with its caches, WAN_DECODE for the chunk;
  CogVideoX's decodes batches of 2–3 latent frames with caches, COGVIDEOX_DECODE for the batch),
  plus twice the output video (the chunk list and its concatenation). AutoencoderKL's mid-block
  attention has one head of 512 channels, which fused kernels may not take: its logit matrix
  (latent pixels squared) is counted once.
- Methods that chunk attention (FreeTraj, scale fusion, diffusion/chunked_attention.py) add two
  calls' worth of logits (the chunk and its softmax).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

GiB = 1 << 30

UNET_WORK = 40.0          # measured 28-38 on tiny-sd (128-256 px) after the skips; see the module doc
MOTION_WORK = 8.0         # AnimateDiff's temporal attention on top (tiny-animatediff 30-44 in all)
DIT_WIDTH_WORK = 10.0     # per token and channel of width (tiny-wan 2.7, tiny-cogvideox 7.4-8.6)
DIT_TEXT_WORK = 12.0      # per text token and channel of width (conditioning, cross-attention keys)
KL_DECODE = 6.0           # AutoencoderKL decode (tiny-sd 5.02 at 128 and 256 px)
WAN_DECODE = 50.0         # Wan VAE, one streamed latent frame and its caches (tiny-wan 45.5)
COGVIDEOX_DECODE = 215.0  # CogVideoX VAE, one frame batch and its caches (tiny-cogvideox 137-206)
TEXT_WORK = 16.0          # per text token and channel of the text encoder (T5's gated FFN and states)
MARGIN_FRACTION = 0.10    # allocator fragmentation
MARGIN_BYTES = 512 << 20  # cuBLAS/cuDNN workspaces, the CUDA graph of SDPA, latents, previews


@dataclass(frozen=True)
class Component:
    """One module of the pipeline as it sits on the device: its weights in the dtype it runs in."""
    name: str
    parameter_bytes: int
    largest_module_bytes: int = 0  # the biggest leaf module's weights (sequential offload holds one)
    role: str = "other"  # text | denoiser | vae | image | other (Tora modules: always on the device)
    # model offload: the phases it is on the device in, where that is not its role's (None = its role's)
    phases: tuple[str, ...] | None = None
    # model offload: a role whose components leave the device while this one is there (the SDXL refiner's
    # UNet and the base's, pipelines/refiner.py): a phase counts the larger of the two, not both
    turns_with: str = ""


@dataclass(frozen=True)
class Architecture:
    family: str  # sd | animatediff | wan | cogvideox
    components: tuple[Component, ...]
    denoiser: Mapping[str, Any]  # the UNet's or transformer's config
    vae: Mapping[str, Any]
    denoiser_bytes: int = 2  # bytes per element of the denoiser's activations
    vae_bytes: int = 4
    text_width: int = 768  # the text encoder's model width (its activations)
    text_tokens: int = 77
    vae_scale: int = 8
    temporal_scale: int = 4  # video VAEs: pixel frames per latent frame
    extra_denoisers: tuple[Mapping[str, Any], ...] = ()  # other UNets on the same latent (the SDXL refiner)
    control: Mapping[str, Any] | None = None  # a ControlNet's config (SparseCtrl) whose residuals the UNet takes

    def role_bytes(self, role: str) -> int:
        return sum(c.parameter_bytes for c in self.components if c.role == role)

    def largest_module(self, role: str) -> int:
        return max((c.largest_module_bytes for c in self.components if c.role == role), default=0)


@dataclass(frozen=True)
class Workload:
    """What one job asks of the model (sizes in pixels)."""
    width: int
    height: int
    frames: int = 1
    cfg: bool = True
    rows: int = 1  # latent images/videos in one denoiser call (batched frames of the image pipeline, windows)
    decode_frames: int = 1  # frames the VAE decodes in one call (images, AnimateDiff chunks)
    decode_tile: int | None = None  # the decode's tile side in px when tiled, else None (whole frame)
    offload: str = "none"
    chunked_attention_logits: int = 0  # elements per call of diffusion/chunked_attention.py; 0 = not used


@dataclass(frozen=True)
class Estimate:
    total: int
    phase: str  # which phase peaks
    phases: dict[str, tuple[int, int]] = field(default_factory=dict)  # phase -> (weights, activations)

    def gib(self) -> float:
        return self.total / GiB


# ---- weights on the device per phase ---------------------------------------------------------------
def _weights(arch: Architecture, phase: str, offload: str) -> int:
    always = arch.role_bytes("other")
    if offload == "none":
        return sum(c.parameter_bytes for c in arch.components)
    roles = {"text": ("text", "image"), "denoise": ("denoiser", "vae"), "decode": ("vae",)}[phase]
    if offload == "model":
        on = [c for c in arch.components if c.role != "other"
              and (phase in c.phases if c.phases is not None else c.role in roles)]
        stays = sum(c.parameter_bytes for c in on if not c.turns_with)
        for c in on:
            if c.turns_with:
                other = sum(o.parameter_bytes for o in on if not o.turns_with and o.role == c.turns_with)
                stays += max(0, c.parameter_bytes - other)
        return always + stays
    return always + 2 * max(arch.largest_module(r) for r in roles)


# ---- activations --------------------------------------------------------------------------------------
def _unet_skips(config: Mapping[str, Any]) -> float:
    """Feature maps the down path keeps for the up path, in units of the first level's map."""
    channels = list(config.get("block_out_channels", (320, 640, 1280, 1280)))
    layers = config.get("layers_per_block", 2)
    layers = layers if isinstance(layers, int) else max(layers)
    c0, total = channels[0], 1.0  # conv_in
    for level, c in enumerate(channels):
        area = 4.0 ** -level
        total += layers * c / c0 * area
        if level < len(channels) - 1:
            total += c / c0 * area / 4  # the downsampler's output
    return total


def _first_channels(config: Mapping[str, Any]) -> int:
    return int(list(config.get("block_out_channels", (320,)))[0])


def _denoise_activations(arch: Architecture, work: Workload) -> int:
    s = arch.vae_scale
    h, w = work.height // s, work.width // s
    cfg = 2 if work.cfg else 1
    if arch.family in ("sd", "animatediff"):
        rows = work.rows * work.frames * cfg
        motion = MOTION_WORK if arch.family == "animatediff" else 0.0
        channels = max(_first_channels(c) * (UNET_WORK + _unet_skips(c) + motion)
                       for c in (arch.denoiser, *arch.extra_denoisers))
        if arch.control:  # the ControlNet's residuals for the skips and the mid block, alive through the UNet
            channels += _first_channels(arch.control) * _unet_skips(arch.control)
        return int(rows * h * w * arch.denoiser_bytes * channels)
    patch = arch.denoiser.get("patch_size", 2)
    ph, pw = (patch[1], patch[2]) if isinstance(patch, (list, tuple)) else (patch, patch)
    latent_frames = (work.frames - 1) // arch.temporal_scale + 1
    tokens = latent_frames * (h // ph) * (w // pw)
    width = int(arch.denoiser["num_attention_heads"]) * int(arch.denoiser["attention_head_dim"])
    ffn = int(arch.denoiser.get("ffn_dim") or 4 * width)
    text = int(arch.denoiser.get("max_text_seq_length") or 512)
    if arch.family == "cogvideox":  # both guidance halves in one call, text and video tokens attend jointly
        batch, width_bytes, tokens = work.rows * cfg, arch.denoiser_bytes, tokens + text
    else:  # Wan: one pass at a time; residual stream and norms in float32
        batch, width_bytes = work.rows, 4
    per_token = DIT_WIDTH_WORK * width * width_bytes + 2 * ffn * arch.denoiser_bytes
    return int(batch * (tokens * per_token + text * DIT_TEXT_WORK * width * arch.denoiser_bytes))


def _decoder_channels(arch: Architecture) -> int:
    if "base_dim" in arch.vae:  # Wan: the decoder's last level has base_dim × dim_mult[0] channels
        return int(arch.vae["base_dim"]) * int(list(arch.vae.get("dim_mult", (1,)))[0])
    return int(list(arch.vae.get("block_out_channels", (128,)))[0])


def kl_decode_frame_bytes(height: int, width: int, decoder_channels: int, vae_bytes: int, vae_scale: int) -> int:
    """Activations of one frame through an AutoencoderKL decoder (px sizes; the tile's when tiled)."""
    latent_pixels = (height // vae_scale) * (width // vae_scale)
    logits = latent_pixels ** 2 * vae_bytes  # the one-head mid-block attention, if not fused
    return int(KL_DECODE * height * width * decoder_channels * vae_bytes + logits)


def kl_decode_frames_that_fit(frame_bytes: int, budget: int, most: int = 16) -> int:
    """Frames a frame-wise VAE decodes in one call within `budget` bytes: 16, 8, 4, 2 or 1."""
    for n in (16, 8, 4, 2):
        if n <= most and n * frame_bytes <= budget:
            return n
    return 1


def _decode_activations(arch: Architecture, work: Workload) -> int:
    side_h = min(work.height, work.decode_tile or work.height)
    side_w = min(work.width, work.decode_tile or work.width)
    unit = side_h * side_w * _decoder_channels(arch) * arch.vae_bytes
    output = 2 * work.frames * 3 * work.height * work.width * 4  # the decoded frames (float32) and their cat
    if arch.family == "wan":
        return int(WAN_DECODE * unit + output)
    if arch.family == "cogvideox":
        return int(COGVIDEOX_DECODE * unit + output)
    frame = kl_decode_frame_bytes(side_h, side_w, _decoder_channels(arch), arch.vae_bytes, arch.vae_scale)
    return int(min(work.decode_frames, work.frames) * frame + output // 2)


def fewer_decode_frames(arch: Architecture, work: Workload, budget: int) -> Workload:
    """The workload with the most frames per VAE call (16, 8, 4, 2, 1) whose whole job fits `budget`:
    a frame-wise VAE decodes in smaller batches on a smaller GPU, as the adapter does at run time."""
    if work.decode_frames <= 1:
        return work
    for n in (16, 8, 4, 2):
        if n <= work.decode_frames and estimate(arch, replace(work, decode_frames=n)).total <= budget:
            return replace(work, decode_frames=n)
    return replace(work, decode_frames=1)


def _chunk_logits(arch: Architecture, work: Workload) -> int:
    """Logits one chunked-attention call holds: the chunk limit, or the whole first-level self-attention
    when that is smaller (rows × heads × tokens², a UNet's; DiT self-attention is not chunked)."""
    if not work.chunked_attention_logits:
        return 0
    heads = arch.denoiser.get("num_attention_heads") or arch.denoiser.get("attention_head_dim") or 8
    heads = int(heads if isinstance(heads, int) else list(heads)[0])
    tokens = (work.height // arch.vae_scale) * (work.width // arch.vae_scale)
    rows = work.rows * work.frames * (2 if work.cfg else 1)
    return min(work.chunked_attention_logits, rows * heads * tokens * tokens)


def _text_activations(arch: Architecture, work: Workload) -> int:
    return int(2 * arch.text_tokens * arch.text_width * TEXT_WORK * arch.denoiser_bytes)


def estimate(arch: Architecture, work: Workload) -> Estimate:
    """The job's peak device memory in bytes (with the margin) and the phase it peaks in."""
    extra = 2 * _chunk_logits(arch, work) * 4  # a chunk's logits and their softmax, float32 at most
    activations = {"text": _text_activations(arch, work),
                   "denoise": _denoise_activations(arch, work) + extra,
                   "decode": _decode_activations(arch, work)}
    phases = {p: (_weights(arch, p, work.offload), a) for p, a in activations.items()}
    peak_phase = max(phases, key=lambda p: sum(phases[p]))
    raw = sum(phases[peak_phase])
    return Estimate(int(raw * (1 + MARGIN_FRACTION) + MARGIN_BYTES), peak_phase, phases)


# ---- what to lower -------------------------------------------------------------------------------------
def gb(n: int) -> str:
    """GB as GPUs are sold and --device-memory is read: 2^30 bytes."""
    return f"{n / GiB:.1f} GB"  # one decimal: 24.2 against 24.0 must not read as 24 against 24


def advice(arch: Architecture, work: Workload, budget: int, *, video: bool, device: str = "this GPU") -> str | None:
    """None when the job fits; else a sentence with the estimate, the budget, and settings that would fit."""
    needed = estimate(arch, work)
    if needed.total <= budget:
        return None
    options: list[str] = []
    for mode in ("model", "sequential"):
        if ("none", "model", "sequential").index(mode) > ("none", "model", "sequential").index(work.offload):
            if estimate(arch, replace(work, offload=mode)).total <= budget:
                options.append(f"set offload to {mode}")
                break
    if video and work.frames > 1:
        frames = _largest_fitting(lambda f: replace(work, frames=f), arch, budget, 1, work.frames - 1,
                                  step=arch.temporal_scale if arch.family in ("wan", "cogvideox") else 1)
        if frames:
            options.append(f"lower frames to {frames}")
    scale = _largest_scale(arch, work, budget)
    if scale:
        options.append(f"lower width × height to {scale[0]} × {scale[1]}")
    tail = ": " + " or ".join(options) if options else (": it does not fit at any setting cinegen can lower; "
                                                       "use a GPU with more memory")
    return (f"This job needs about {gb(needed.total)} of device memory at its peak ({needed.phase}), "
            f"{device} has {gb(budget)}{tail}.")


def _largest_fitting(make, arch: Architecture, budget: int, low: int, high: int, step: int = 1) -> int | None:
    candidates = [f for f in range(high, low - 1, -1) if step == 1 or (f - 1) % step == 0]
    lo, hi, best = 0, len(candidates) - 1, None  # memory falls as frames fall: bisect on the list
    while lo <= hi:
        mid = (lo + hi) // 2
        if estimate(arch, make(candidates[mid])).total <= budget:
            best, hi = candidates[mid], mid - 1
        else:
            lo = mid + 1
    return best


def _largest_scale(arch: Architecture, work: Workload, budget: int) -> tuple[int, int] | None:
    multiple = 16 * arch.vae_scale // 8
    for percent in range(90, 9, -10):
        f = math.sqrt(percent / 100)
        w = max(multiple, int(work.width * f) // multiple * multiple)
        h = max(multiple, int(work.height * f) // multiple * multiple)
        if estimate(arch, replace(work, width=w, height=h)).total <= budget:
            return w, h
    return None
