"""Train `toy-image-16`: toy-image at a 128 px native size, i.e. 16x16 latents, where FreeScale's parts can act.

At toy-image's 8x8 latents the UNet's deepest block is 2x2 and every view covers the whole picture, so
dilation and scale fusion have nothing to do (issue 20). toy-image-16 keeps toy-image's factor-8 VAE and
text encoder, frozen (the VAE is convolutional and reconstructs 128 px scenes with L1 0.053 vs 0.040 at
64 px), and fine-tunes a copy of toy-image's UNet (same architecture, sample_size 16) on 128 px scenes:
the DDPM epsilon objective with SD's scaled-linear betas, 10% captions dropped for guidance. Starting
from the 64 px UNet rather than from scratch is what makes this fit a CPU budget: it already knows the
colours, shapes and captions and only has to learn objects twice as large in latent cells.

    python -m cinegen.server.toyworld.train_image16 --out DIR --minutes 30 --seed 0 --threads 2 [--pool FILE]
    python -m cinegen.server.toyworld.train_image16 --out DIR2 --init DIR/unet --pool FILE --minutes 30

`--pool FILE` keeps the encoded scenes (the same for a given seed) so a second run does not encode them
again; `--init` goes on from an earlier run's UNet, with a fresh optimiser warmed up again.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .train_image import LossLog, new_training_scheduler, sample_latents, take_step
from .world import batch as world_batch

NATIVE = 128


@dataclass(frozen=True)
class Train16Config:
    out: Path
    seed: int = 0
    minutes: float = 30.0
    steps: int = 20000
    batch: int = 24
    lr: float = 5e-4
    warmup: int = 50
    latent_pool: int = 4096  # 128 px scenes encoded once (2 s per 64 on one core), re-sampled every step
    caption_dropout: float = 0.1
    pool: Path | None = None  # where the encoded scenes are kept between runs
    init: Path | None = None  # an earlier run's UNet folder to go on from (default: toy-image's UNet)


def encode_pool(vae, seed: int, count: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    means, stds, captions = [], [], []
    with torch.no_grad():
        for start in range(0, count, 64):
            images, caps = world_batch(seed, start, 64, NATIVE)
            dist = vae.encode(torch.from_numpy(images) * 2 - 1).latent_dist
            means.append(dist.mean)
            stds.append(dist.std)
            captions += caps
    return torch.cat(means), torch.cat(stds), captions


def load_or_encode_pool(vae, cfg: Train16Config) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    if cfg.pool is not None and cfg.pool.exists():
        saved = torch.load(cfg.pool)
        if saved["seed"] == cfg.seed and len(saved["captions"]) == cfg.latent_pool:
            return saved["means"], saved["stds"], saved["captions"]
    means, stds, captions = encode_pool(vae, cfg.seed + 101, cfg.latent_pool)
    if cfg.pool is not None:
        torch.save({"seed": cfg.seed, "means": means, "stds": stds, "captions": captions}, cfg.pool)
    return means, stds, captions


def train(cfg: Train16Config, base: Path) -> Path:
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    deadline = time.time() + 60 * cfg.minutes
    pipe = StableDiffusionPipeline.from_pretrained(str(base), dtype=torch.float32, safety_checker=None,
                                                   feature_extractor=None, requires_safety_checker=False,
                                                   local_files_only=True)
    vae, text_encoder, tokenizer = pipe.vae.eval(), pipe.text_encoder.eval(), pipe.tokenizer
    vae.requires_grad_(False)
    text_encoder.requires_grad_(False)
    # the same UNet at a 16x16 sample size: every weight carries over, only the config's size changes
    unet = UNet2DConditionModel.from_config({**pipe.unet.config, "sample_size": NATIVE // 8})
    start = UNet2DConditionModel.from_pretrained(str(cfg.init)) if cfg.init else pipe.unet
    unet.load_state_dict(start.state_dict())
    means, stds, captions = load_or_encode_pool(vae, cfg)
    print(f"encoded {len(captions)} scenes at {NATIVE} px", flush=True)
    with torch.no_grad():  # captions are few (72): encode each once
        unique = sorted(set(captions) | {""})
        ids = tokenizer(unique, padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids
        embeds = dict(zip(unique, text_encoder(ids)[0]))
    torch.manual_seed(cfg.seed + 102)
    noise_sched = new_training_scheduler()
    params = list(unet.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    # a fresh Adam on trained weights overshoots on its first steps: warm the rate up
    warmup = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / cfg.warmup))
    rng = np.random.default_rng(cfg.seed + 103)
    scale = vae.config.scaling_factor
    log = LossLog(cfg.out / "unet16_loss.csv")
    unet.train()
    for step in range(cfg.steps):
        if time.time() > deadline:
            break
        idx = rng.integers(0, len(captions), cfg.batch)
        z0 = sample_latents(means, stds, idx, scale)
        cond = torch.stack([embeds["" if rng.random() < cfg.caption_dropout else captions[i]] for i in idx])
        noise = torch.randn_like(z0)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (cfg.batch,))
        pred = unet(noise_sched.add_noise(z0, noise, t), t, cond).sample
        loss = (pred - noise).pow(2).mean()
        take_step(opt, loss, params)
        warmup.step()
        log.add(step, loss.item())
    log.close()
    folder = cfg.out / "unet"
    unet.eval().save_pretrained(str(folder), safe_serialization=True)
    return folder


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--minutes", type=float, default=30.0, help="wall-clock budget of the UNet steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=Train16Config.steps)
    p.add_argument("--batch", type=int, default=Train16Config.batch)
    p.add_argument("--pool", type=Path, help="file of encoded scenes, written once and reused")
    p.add_argument("--init", type=Path, help="an earlier run's unet folder to go on from")
    p.add_argument("--encode-only", action="store_true", help="write --pool and stop")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)  # the machine is shared
    from ..models.toy import TOY_IMAGE_DIR

    cfg = Train16Config(out=a.out, seed=a.seed, minutes=a.minutes, steps=a.steps, batch=a.batch, pool=a.pool,
                        init=a.init)
    cfg.out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    if a.encode_only:
        from diffusers import AutoencoderKL

        load_or_encode_pool(AutoencoderKL.from_pretrained(str(TOY_IMAGE_DIR / "vae"), dtype=torch.float32).eval(), cfg)
        return
    folder = train(cfg, TOY_IMAGE_DIR)
    print(f"saved {folder} after {(time.time() - start) / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
