"""Train the `toy-video` motion module on CPU: AnimateDiff's recipe on toy-world clips.

As in AnimateDiff (Guo et al. 2023, §4.2), the image model is frozen — here the committed toy-image
(VAE, text encoder, UNet) — and only temporal transformer layers (a diffusers `MotionAdapter`,
inserted by `UNetMotionModel.from_unet2d`) are trained, with the image model's DDPM objective on
whole clips:

    L = E || eps - eps_theta(sqrt(a_t) z0 + sqrt(1 - a_t) eps, t, tau(caption)) ||^2,
    z0, eps of shape (B, C, F, h, w), one t per clip.

Each motion module's output projection starts at zero (AnimateDiff's `zero_initialize`), so training
starts from exactly the image model applied frame by frame. Clips come from `clips.py` (8 frames,
64 px); they are encoded once into a latent pool and re-sampled from their posterior every step.
Only the adapter is saved (fp32 here; the committed copy is fp16, see `report.py`).

    python -m cinegen.server.toyworld.train_video --out DIR --minutes N --seed S
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .clips import ClipParams, clip_batch
from .train_image import NATIVE, LossLog, new_training_scheduler, sample_latents, take_step

FRAMES = 8


@dataclass(frozen=True)
class VideoTrainConfig:
    out: Path
    image_model: Path
    seed: int = 0
    minutes: float = 30.0
    steps: int = 20000
    batch: int = 8  # clips per step (x 8 frames)
    lr: float = 1e-3
    warmup: int = 100
    clip_pool: int = 4000
    caption_dropout: float = 0.1


def build_motion_adapter():
    from diffusers import MotionAdapter

    # matches toy-image's UNet: 3 blocks of 48/96/96 channels, one layer per block, group norm of 8
    return MotionAdapter(block_out_channels=(48, 96, 96), motion_layers_per_block=1, motion_num_attention_heads=4,
                         motion_norm_num_groups=8, motion_max_seq_length=32, use_motion_mid_block=True)


def zero_motion_outputs(unet) -> int:
    """Zero every motion module's output projection (the residual adds nothing at first); returns the count."""
    from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D

    count = 0
    for module in unet.modules():
        if isinstance(module, AnimateDiffTransformer3D):
            torch.nn.init.zeros_(module.proj_out.weight)
            torch.nn.init.zeros_(module.proj_out.bias)
            count += 1
    return count


def copy_motion_modules(unet, adapter) -> None:
    """The trained motion modules of a UNetMotionModel back into its MotionAdapter (the inverse of
    `UNetMotionModel.load_motion_modules`)."""
    for block, source in zip(adapter.down_blocks, unet.down_blocks):
        block.motion_modules.load_state_dict(source.motion_modules.state_dict())
    for block, source in zip(adapter.up_blocks, unet.up_blocks):
        block.motion_modules.load_state_dict(source.motion_modules.state_dict())
    if adapter.mid_block is not None:
        adapter.mid_block.motion_modules.load_state_dict(unet.mid_block.motion_modules.state_dict())


def _encode_clips(vae, cfg: VideoTrainConfig) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Posterior mean and std of every clip, (N, C, F, h, w), and the captions."""
    means, stds, captions = [], [], []
    params = ClipParams(frames=FRAMES)
    with torch.no_grad():
        for start in range(0, cfg.clip_pool, 16):
            clips, caps = clip_batch(cfg.seed + 1, start, 16, NATIVE, params)
            n, f = clips.shape[:2]
            dist = vae.encode(torch.from_numpy(clips.reshape(n * f, *clips.shape[2:])) * 2 - 1).latent_dist
            for stat, out in ((dist.mean, means), (dist.std, stds)):
                out.append(stat.reshape(n, f, *stat.shape[1:]).permute(0, 2, 1, 3, 4))
            captions += caps
    return torch.cat(means), torch.cat(stds), captions


def train_motion(cfg: VideoTrainConfig, deadline: float) -> Path:
    from diffusers import StableDiffusionPipeline, UNetMotionModel

    sd = StableDiffusionPipeline.from_pretrained(str(cfg.image_model), dtype=torch.float32, safety_checker=None,
                                                 feature_extractor=None, requires_safety_checker=False,
                                                 local_files_only=True)
    means, stds, captions = _encode_clips(sd.vae.eval(), cfg)
    print(f"encoded {len(captions)} clips of {FRAMES} frames", flush=True)
    with torch.no_grad():  # the text encoder is frozen: each distinct caption is encoded once
        distinct = sorted(set(captions)) + [""]
        ids = sd.tokenizer(distinct, padding="max_length", max_length=sd.tokenizer.model_max_length,
                           truncation=True, return_tensors="pt").input_ids
        table = dict(zip(distinct, sd.text_encoder(ids)[0]))
    torch.manual_seed(cfg.seed + 2)
    adapter = build_motion_adapter()
    unet = UNetMotionModel.from_unet2d(sd.unet, adapter)
    print(f"zeroed {zero_motion_outputs(unet)} motion output projections", flush=True)
    unet.freeze_unet2d_params()
    unet.train()
    trained = [p for p in unet.parameters() if p.requires_grad]
    print(f"training {sum(p.numel() for p in trained)} motion parameters", flush=True)
    opt = torch.optim.AdamW(trained, lr=cfg.lr, weight_decay=0.01)
    warmup = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / cfg.warmup))
    noise_sched = new_training_scheduler()
    rng = np.random.default_rng(cfg.seed + 3)
    scale = sd.vae.config.scaling_factor
    log = LossLog(cfg.out / "motion_loss.csv")
    for step in range(cfg.steps):
        if time.time() > deadline:
            break
        idx = rng.integers(0, len(captions), cfg.batch)
        z0 = sample_latents(means, stds, idx, scale)
        embeds = torch.stack([table["" if rng.random() < cfg.caption_dropout else captions[i]] for i in idx])
        noise = torch.randn_like(z0)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (cfg.batch,))
        # add_noise broadcasts over dims after the first, so one t per clip noises all its frames
        pred = unet(noise_sched.add_noise(z0, noise, t), t,
                    encoder_hidden_states=embeds.repeat_interleave(FRAMES, dim=0)).sample
        loss = (pred - noise).pow(2).mean()
        take_step(opt, loss, trained)
        warmup.step()
        log.add(step, loss.item())
    log.close()
    copy_motion_modules(unet, adapter)
    folder = cfg.out / "motion_adapter"
    adapter.save_pretrained(str(folder), safe_serialization=True)
    return folder


def main(argv: list[str] | None = None) -> None:
    from ..models.toy import TOY_IMAGE_DIR

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--image-model", type=Path, default=TOY_IMAGE_DIR, help="the frozen SD folder (toy-image)")
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=VideoTrainConfig.steps)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)  # the machine is shared: one core by default
    cfg = VideoTrainConfig(out=a.out, image_model=a.image_model, seed=a.seed, minutes=a.minutes, steps=a.steps)
    cfg.out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    folder = train_motion(cfg, start + 60 * cfg.minutes)
    print(f"saved {folder} after {(time.time() - start) / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
