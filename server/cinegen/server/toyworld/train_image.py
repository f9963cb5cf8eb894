"""Train the `toy-image` model on CPU: a factor-8 AutoencoderKL, then a text-conditioned UNet on its latents.

Stage 1 (VAE): L1 + MSE reconstruction of 64 px toy scenes plus a small KL term (weight `kl_weight`,
as in LDM, Rombach et al. 2022, eq. 25 with a tiny KL instead of a GAN); the latent scaling factor is
then set to 1/std of the encoded latents so the UNet sees unit-variance latents, as SD does.
Stage 2 (UNet + text encoder, trained jointly): the DDPM epsilon objective
    L = E || eps - eps_theta(sqrt(a_t) z0 + sqrt(1 - a_t) eps, t, tau(caption)) ||^2
with SD's scaled-linear betas, captions dropped to "" 10% of the time so classifier-free guidance works.
Stage 3 (optional, `--stage decoder`): the decoder alone is fine-tuned on the frozen encoder's mean
latents (as Stability's ft-MSE VAE was), which sharpens edges without moving the latent space the UNet
was trained on.
Training runs a fixed number of steps, stopped early by `--minutes` (the steps reached are logged).

    python -m cinegen.server.toyworld.train_image --out DIR --minutes N --seed S
"""
from __future__ import annotations

import argparse
import csv
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .world import batch as world_batch

NATIVE = 64


@dataclass(frozen=True)
class TrainConfig:
    out: Path
    seed: int = 0
    minutes: float = 30.0
    vae_fraction: float = 0.3  # share of the time budget for the VAE
    vae_steps: int = 4000
    vae_batch: int = 16
    vae_lr: float = 1e-3
    kl_weight: float = 1e-6
    unet_steps: int = 20000
    unet_batch: int = 32
    unet_lr: float = 1e-3
    latent_pool: int = 12000  # scenes encoded once, re-noised every step
    caption_dropout: float = 0.1


def build_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=NATIVE, layers_per_block=1,
        block_out_channels=(16, 32, 32, 64), norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)


def build_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    from ..models.tokenizer import BOS_ID, EOS_ID, VOCAB_SIZE

    return CLIPTextModel(CLIPTextConfig(
        vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, bos_token_id=BOS_ID, eos_token_id=EOS_ID,
        pad_token_id=EOS_ID, projection_dim=64))


def build_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=NATIVE // 8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(48, 96, 96), norm_num_groups=8, attention_head_dim=8, cross_attention_dim=64,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))


def new_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def new_training_scheduler():
    """SD's scaled-linear DDPM noise schedule, which both toy models are trained with."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def sample_latents(means: torch.Tensor, stds: torch.Tensor, idx: np.ndarray, scale: float) -> torch.Tensor:
    """Fresh draws from the pooled posteriors of items `idx`, scaled like the latents the denoiser sees."""
    return (means[idx] + stds[idx] * torch.randn_like(means[idx])) * scale


def take_step(opt: torch.optim.Optimizer, loss: torch.Tensor, params: list, clip: float = 1.0) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, clip)
    opt.step()


class LossLog:
    def __init__(self, path: Path):
        self.file = path.open("w", newline="")
        self.writer = csv.writer(self.file)
        self.writer.writerow(["step", "loss", "seconds"])
        self.start = time.time()

    def add(self, step: int, loss: float) -> None:
        self.writer.writerow([step, f"{loss:.6f}", f"{time.time() - self.start:.1f}"])
        if step % 50 == 0:
            self.file.flush()
            print(f"step {step} loss {loss:.5f} {time.time() - self.start:.0f}s", flush=True)

    def close(self) -> None:
        self.file.close()


def _scene_batch(seed: int, start: int, count: int) -> torch.Tensor:
    images, _ = world_batch(seed, start, count, NATIVE)
    return torch.from_numpy(images) * 2 - 1


def train_vae(cfg: TrainConfig, deadline: float) -> Path:
    torch.manual_seed(cfg.seed)
    vae = build_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    log = LossLog(cfg.out / "vae_loss.csv")
    for step in range(cfg.vae_steps):
        if time.time() > deadline:
            break
        x = _scene_batch(cfg.seed, step * cfg.vae_batch, cfg.vae_batch)
        dist = vae.encode(x).latent_dist
        y = vae.decode(dist.sample()).sample
        loss = (y - x).abs().mean() + (y - x).pow(2).mean() + cfg.kl_weight * dist.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        log.add(step, loss.item())
    log.close()
    with torch.no_grad():  # unit-variance latents for the UNet, on held-out scenes
        z = vae.encode(_scene_batch(cfg.seed + 10_000, 0, 256)).latent_dist.mean
    vae.register_to_config(scaling_factor=float(1.0 / z.std()))
    folder = cfg.out / "vae"
    vae.save_pretrained(str(folder), safe_serialization=True)
    return folder


def _encode_pool(vae, cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    means, stds, captions = [], [], []
    with torch.no_grad():
        for start in range(0, cfg.latent_pool, 64):
            images, caps = world_batch(cfg.seed + 1, start, 64, NATIVE)
            dist = vae.encode(torch.from_numpy(images) * 2 - 1).latent_dist
            means.append(dist.mean)
            stds.append(dist.std)
            captions += caps
    return torch.cat(means), torch.cat(stds), captions


def train_unet(cfg: TrainConfig, vae_folder: Path, deadline: float) -> Path:
    from diffusers import AutoencoderKL, StableDiffusionPipeline

    from ..models.tokenizer import byte_level_clip_tokenizer

    vae = AutoencoderKL.from_pretrained(str(vae_folder)).eval()
    tokenizer = byte_level_clip_tokenizer()
    means, stds, captions = _encode_pool(vae, cfg)
    print(f"encoded {len(captions)} scenes", flush=True)
    torch.manual_seed(cfg.seed + 2)
    text_encoder, unet = build_text_encoder(), build_unet()
    noise_sched = new_training_scheduler()
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.unet_lr, weight_decay=0.01)
    rng = np.random.default_rng(cfg.seed + 3)
    scale = vae.config.scaling_factor
    log = LossLog(cfg.out / "unet_loss.csv")
    for step in range(cfg.unet_steps):
        if time.time() > deadline:
            break
        idx = rng.integers(0, len(captions), cfg.unet_batch)
        z0 = sample_latents(means, stds, idx, scale)
        caps = ["" if rng.random() < cfg.caption_dropout else captions[i] for i in idx]
        ids = tokenizer(caps, padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids
        noise = torch.randn_like(z0)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (cfg.unet_batch,))
        pred = unet(noise_sched.add_noise(z0, noise, t), t, text_encoder(ids)[0]).sample
        loss = (pred - noise).pow(2).mean()
        take_step(opt, loss, params)
        log.add(step, loss.item())
    log.close()
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder.eval(), tokenizer=tokenizer,
                                   unet=unet.eval(), scheduler=new_scheduler(), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    folder = cfg.out / "pipeline"
    pipe.save_pretrained(str(folder), safe_serialization=True)
    return folder


def finetune_decoder(cfg: TrainConfig, pipeline_folder: Path, deadline: float) -> None:
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(str(pipeline_folder / "vae"))
    vae.requires_grad_(False)
    trained = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    for param in trained:
        param.requires_grad_(True)
    opt = torch.optim.AdamW(trained, lr=cfg.vae_lr / 2, weight_decay=0.0)
    # a fresh Adam on trained weights overshoots on its first steps: warm the rate up
    warmup = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / 100))
    log = LossLog(cfg.out / "decoder_loss.csv")
    for step in range(cfg.vae_steps):
        if time.time() > deadline:
            break
        x = _scene_batch(cfg.seed + 20_000, step * cfg.vae_batch, cfg.vae_batch)
        with torch.no_grad():
            z = vae.encode(x).latent_dist.mean
        y = vae.decode(z).sample
        loss = (y - x).abs().mean() + (y - x).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        warmup.step()
        log.add(step, loss.item())
    log.close()
    vae.save_pretrained(str(pipeline_folder / "vae"), safe_serialization=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--minutes", type=float, default=30.0, help="wall-clock budget for both stages")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vae-steps", type=int, default=TrainConfig.vae_steps)
    p.add_argument("--unet-steps", type=int, default=TrainConfig.unet_steps)
    p.add_argument("--stage", choices=("all", "decoder"), default="all",
                   help="decoder: fine-tune the VAE decoder of an already trained --out for --minutes")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)  # the machine is shared: one core by default
    cfg = TrainConfig(out=a.out, seed=a.seed, minutes=a.minutes, vae_steps=a.vae_steps, unet_steps=a.unet_steps)
    cfg.out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    if a.stage == "decoder":
        finetune_decoder(cfg, cfg.out / "pipeline", start + 60 * cfg.minutes)
        return
    vae_folder = train_vae(cfg, start + 60 * cfg.minutes * cfg.vae_fraction)
    folder = train_unet(cfg, vae_folder, start + 60 * cfg.minutes)
    print(f"saved {folder} after {(time.time() - start) / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
