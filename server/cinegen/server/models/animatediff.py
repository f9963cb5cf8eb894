"""The `animatediff` family: SD image UNets with a motion module (`UNetMotionModel`).

SD 1.5 + motion adapter runs through `AnimateDiffPipeline`, SDXL + an SDXL motion adapter through
`AnimateDiffSDXLPipeline` (its two text encoders' pooled embeds and time ids per clip, as stock).

Latents are (B, C, F, H, W). The adapter mirrors `AnimateDiffPipeline.__call__` (prompt encoding,
`randn_tensor` latents, guidance, frame-wise VAE decode) so the stock pipeline is the reference.
"""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch

from .family import ModelEntry
from .folder_check import check_loaded, weights_variant
from .memory_estimate import kl_decode_frame_bytes, kl_decode_frames_that_fit
from .sd import SDAdapter, _repeat_halves, keep_vae_in_float32
from .toy import read_sidecar

ANIMATEDIFF_PIPELINE_CLASSES = ("AnimateDiffPipeline", "AnimateDiffSDXLPipeline")
NATIVE_FRAMES = 16  # AnimateDiff's motion modules are trained on 16-frame clips (a sidecar may say otherwise)


class AnimateDiffAdapter(SDAdapter):
    family: ClassVar[str] = "animatediff"
    kind: ClassVar[str] = "video"
    default_steps: ClassVar[int] = 25
    default_guidance: ClassVar[float] = 7.5

    @property
    def is_xl(self) -> bool:
        return type(self.pipe).__name__ == "AnimateDiffSDXLPipeline"

    @property
    def native_frames(self) -> int:
        # the motion module's training length; its position table allows at most motion_max_seq_length
        return int(getattr(self.pipe, "_cinegen_native_frames", NATIVE_FRAMES))

    @property
    def max_frames(self) -> int:
        for name, module in self.pipe.unet.named_modules():
            pe = getattr(module, "pos_embed", None)
            if pe is not None and hasattr(pe, "pe"):
                return int(pe.pe.shape[1])
        return 32

    def latent_shape(self, batch: int, width: int, height: int, frames: int = 1) -> tuple[int, ...]:
        s = self.vae_scale_factor
        return (batch, self.latent_channels, frames, height // s, width // s)

    def predict(self, x: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        """x: (B, C, F, h, w). The motion UNet wants one prompt row per frame, as the stock pipeline builds."""
        dtype = self.pipe.unet.dtype  # a float32 latent into a float16 UNet (CUDA) fails in conv_in: cast here
        latent_in = (torch.cat([x] * 2) if cond.do_cfg else x).to(dtype)
        rows = latent_in.shape[0]
        embeds = cond.embeds.to(dtype)
        if embeds.shape[0] != rows:  # several clips (windows) over one encoded prompt
            embeds = _repeat_halves(embeds, rows, cond.do_cfg)
        embeds = embeds.repeat_interleave(repeats=x.shape[2], dim=0)
        control = cond.extra.get("control")  # SparseCtrl (models/sparsectrl.py): residuals for the skips
        residuals = {}
        if control is not None:
            down, mid = control(latent_in, t, embeds)
            residuals = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
        with torch.no_grad():
            out = self.pipe.unet(latent_in, t, encoder_hidden_states=embeds, cross_attention_kwargs=None,
                                 added_cond_kwargs=self._added_cond(x, latent_in.shape[0], cond), return_dict=False, **residuals)[0]
        if cond.do_cfg:
            uncond, text = out.chunk(2)
            out = uncond + cond.guidance * (text - uncond)
        return out

    def _added_cond(self, x: torch.Tensor, rows: int, cond) -> dict | None:
        """AnimateDiff-SDXL: pooled text embeds and time ids, one row per clip (the UNet repeats them per frame)."""
        if not self.is_xl:
            return None
        text_embeds = cond.extra["text_embeds"]
        if text_embeds.shape[0] != rows:
            text_embeds = _repeat_halves(text_embeds, rows, cond.do_cfg)
        h, w = x.shape[-2] * self.vae_scale_factor, x.shape[-1] * self.vae_scale_factor
        return {"text_embeds": text_embeds, "time_ids": self._xl_time_ids(h, w, rows)}

    def _encode_prompt_xl(self, prompt: str, negative_prompt: str, guidance: float, batch: int, do_cfg: bool):
        from .family import Conditioning

        pos, neg, pooled, neg_pooled = self.pipe.encode_prompt(
            prompt=prompt, device=self.device, num_videos_per_prompt=batch,
            do_classifier_free_guidance=do_cfg, negative_prompt=negative_prompt or None)
        embeds = torch.cat([neg, pos]) if do_cfg else pos
        text_embeds = torch.cat([neg_pooled, pooled]) if do_cfg else pooled
        return Conditioning(embeds=embeds, guidance=guidance, do_cfg=do_cfg, extra={"text_embeds": text_embeds})

    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, 3, F, H, W) or (F, 3, H, W) in [0, 1] -> (B, C, F, h, w) scaled latents."""
        if images.dim() == 4:
            images = images.permute(1, 0, 2, 3).unsqueeze(0)
        b, c, f, h, w = images.shape
        flat = images.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        latents = super().encode(flat, generator)
        return latents.reshape(b, f, *latents.shape[1:]).permute(0, 2, 1, 3, 4)

    def decode_chunk(self, height: int, width: int, free_bytes: int | None = None) -> int:
        """Frames per VAE call: stock's 16 where memory allows; on a GPU as many of 16/8/4/2/1 as fit in
        90 % of its free memory (16 frames of 512² in the fp32 VAE take about 13 GB)."""
        if free_bytes is None:
            if self.device.type != "cuda":
                return 16
            free_bytes = torch.cuda.mem_get_info(self.device)[0]
        vae = self.pipe.vae
        tile = self.decode_tile()  # the frame's side, or the tile's when tiled decode takes over
        frame = kl_decode_frame_bytes(min(height, tile), min(width, tile), int(vae.config.block_out_channels[0]),
                                      torch.finfo(vae.dtype).bits // 8, self.vae_scale_factor)
        return kl_decode_frames_that_fit(frame, int(0.9 * free_bytes))

    def decode(self, latents: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        """(B, C, F, h, w) -> (B, 3, F, H, W) in [0, 1]."""
        b, c, f, h, w = latents.shape
        flat = latents.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        chunk = chunk or self.decode_chunk(h * self.vae_scale_factor, w * self.vae_scale_factor)
        frames = torch.cat([super(AnimateDiffAdapter, self).decode(flat[i:i + chunk])
                            for i in range(0, flat.shape[0], chunk)])
        return frames.reshape(b, f, *frames.shape[1:]).permute(0, 2, 1, 3, 4)


def animatediff_pipeline_class(folder: Path):
    """AnimateDiffSDXLPipeline for an SDXL base or a saved AnimateDiff-SDXL folder, else AnimateDiffPipeline."""
    import json

    from diffusers import AnimateDiffPipeline, AnimateDiffSDXLPipeline

    try:
        name = json.loads((folder / "model_index.json").read_text()).get("_class_name", "")
    except (OSError, ValueError):
        name = ""
    return AnimateDiffSDXLPipeline if name in ("StableDiffusionXLPipeline", "AnimateDiffSDXLPipeline") \
        else AnimateDiffPipeline


def load_animatediff(entry: ModelEntry, device: torch.device, dtype: torch.dtype) -> AnimateDiffAdapter:
    from diffusers import MotionAdapter

    cls = animatediff_pipeline_class(Path(entry.path))
    if entry.source == "paired":  # an SD 1.x/SDXL folder + a MotionAdapter folder, assembled as AnimateDiff ships
        motion = MotionAdapter.from_pretrained(entry.extra_path, dtype=dtype, local_files_only=True,
                                               variant=weights_variant(Path(entry.extra_path)))
        check_loaded(motion)
        pipe = cls.from_pretrained(str(Path(entry.path)), motion_adapter=motion, dtype=dtype, local_files_only=True,
                                   variant=weights_variant(Path(entry.path)))
    else:
        pipe = cls.from_pretrained(str(Path(entry.path)), dtype=dtype, local_files_only=True,
                                   variant=weights_variant(Path(entry.path)))
    check_loaded(pipe)  # before the move: tensors the files lack are refused, never left random
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
    keep_vae_in_float32(pipe, dtype)
    frames = read_sidecar(Path(entry.path)).get("native_frames")
    if frames:  # a motion module trained on shorter clips than AnimateDiff's 16
        pipe._cinegen_native_frames = int(frames)
    return AnimateDiffAdapter(pipe, entry, device, dtype)


def build_tiny_animatediff(folder: Path, seed: int = 0) -> None:
    """A tiny AnimateDiff model: the tiny SD parts plus a small MotionAdapter, saved like a real one."""
    from diffusers import AnimateDiffPipeline, MotionAdapter, StableDiffusionPipeline

    from .sd import build_tiny_sd

    sd_folder = folder / "_sd"
    build_tiny_sd(sd_folder, seed=seed)
    sd = StableDiffusionPipeline.from_pretrained(str(sd_folder), safety_checker=None, feature_extractor=None,
                                                 requires_safety_checker=False, local_files_only=True)
    torch.manual_seed(seed + 3)
    adapter = MotionAdapter(block_out_channels=(32, 64), motion_layers_per_block=1,
                            motion_num_attention_heads=2, motion_norm_num_groups=8, motion_max_seq_length=32,
                            use_motion_mid_block=False)
    pipe = AnimateDiffPipeline(vae=sd.vae, text_encoder=sd.text_encoder, tokenizer=sd.tokenizer, unet=sd.unet,
                               motion_adapter=adapter, scheduler=sd.scheduler)
    import shutil

    shutil.rmtree(sd_folder)
    pipe.save_pretrained(str(folder), safe_serialization=True)
