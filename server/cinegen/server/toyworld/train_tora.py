"""Train Tora's Trajectory Extractor and Motion-guidance Fusers on the frozen toy-cogvideox, on CPU.

As in Tora (Zhang et al. 2024, §3.3), the video DiT is frozen and only the motion modules are trained
(diffusion/tora.py: extractor over the VAE latents of the flow video, one fuser after each block's
`norm1`), with the base model's own objective — here CogVideoX's v-prediction MSE (train_cogvideox.py):

    L = E || v - v_theta(z_t, t, T5(caption); TE(E(flow(tracks)))) ||^2

The condition is the toy world's own tracks: each clip's object centres (clips.py), turned into Tora's
flow video (flowmap.py, 99 px / sigma 10 as the inference default) and encoded by the frozen VAE; its
posterior is sampled every step, as the pipeline samples it. The fusers' temporal convs start at zero,
so training starts from the base model exactly. Only the Tora modules are saved, under Tora's
published names (`tora/diffusion_pytorch_model.safetensors`), the layout `load_cogvideox` reads.

    python -m cinegen.server.toyworld.train_tora --base MODEL_DIR --out DIR --minutes 25 --seed 0 --threads 2
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..diffusion.tora import ToraConfig, ToraModules, to_published_state_dict, tora_installed
from .train_cogvideox import CogTrainConfig, caption_table, encode_pool, pool_captions, v_loss
from .train_image import LossLog, sample_latents, take_step

FEATURE_CHANNELS = 32  # Tora's 128, scaled with the tiny DiT (hidden 128)
TORA_WEIGHTS = Path("tora") / "diffusion_pytorch_model.safetensors"


@dataclass(frozen=True)
class ToraTrainConfig:
    base: Path
    out: Path
    seed: int = 0
    minutes: float = 25.0
    steps: int = 10 ** 9  # a cap below the time budget (tests)
    batch: int = 8  # more, smaller steps: the budget is a few hundred steps on a shared CPU
    lr: float = 1e-3
    warmup: int = 50
    clip_pool: int = 1000  # clips and their flow videos, encoded once (two VAE passes per clip)
    caption_dropout: float = 0.1
    checkpoint_minutes: float = 5.0


def tora_config(pipe) -> ToraConfig:
    """Tora modules sized to the pipeline's DiT (one fuser per block) and VAE (flow latent channels)."""
    c = pipe.transformer.config
    return ToraConfig(num_layers=int(c.num_layers), hidden_dim=int(c.num_attention_heads * c.attention_head_dim),
                      latent_channels=int(pipe.vae.config.latent_channels), patch_size=int(c.patch_size),
                      feature_channels=FEATURE_CHANNELS)


def load_base(folder: Path):
    """The frozen base pipeline in float32."""
    from diffusers import CogVideoXPipeline

    pipe = CogVideoXPipeline.from_pretrained(str(folder), dtype=torch.float32, local_files_only=True)
    for module in (pipe.transformer, pipe.vae, pipe.text_encoder):
        module.eval().requires_grad_(False)
    return pipe


def tora_v_loss(pipe, modules: ToraModules, z0: torch.Tensor, flow_latents: torch.Tensor, embeds: torch.Tensor,
                noise: torch.Tensor | None = None, t: torch.Tensor | None = None) -> torch.Tensor:
    """The base model's v-loss with Tora's motion features (from flow latents (B, F', C, h, w)) fused."""
    features = modules.extractor(flow_latents)
    with tora_installed(pipe.transformer, modules, features):
        return v_loss(pipe, z0, embeds, noise=noise, t=t)


def save_tora(modules: ToraModules, folder: Path) -> Path:
    """Tora's weights under its published names, written beside and swapped in (never half a file)."""
    from safetensors.torch import save_file

    path = folder / TORA_WEIGHTS
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.detach().contiguous() for k, v in to_published_state_dict(modules).items()}, str(tmp))
    tmp.replace(path)
    return path


def train_tora(cfg: ToraTrainConfig, deadline: float) -> Path:
    pipe = load_base(cfg.base)
    pool = CogTrainConfig(out=cfg.out, seed=cfg.seed, clip_pool=cfg.clip_pool)
    means, stds = encode_pool(pipe.vae, pool)
    flow_means, flow_stds = encode_pool(pipe.vae, pool, flow=True)
    captions = pool_captions(pool)
    table = caption_table(pipe, captions)
    print(f"encoded {len(captions)} clips and their flow videos", flush=True)
    torch.manual_seed(cfg.seed + 7)
    modules = ToraModules(tora_config(pipe)).train()
    params = list(modules.parameters())
    print(f"training {sum(p.numel() for p in params)} Tora parameters", flush=True)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    warmup = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / cfg.warmup))
    rng = np.random.default_rng(cfg.seed + 8)
    scale = pipe.vae.config.scaling_factor
    log = LossLog(cfg.out / "tora_loss.csv")
    next_checkpoint = time.time() + 60 * cfg.checkpoint_minutes
    step = 0
    while time.time() < deadline and step < cfg.steps:
        idx = rng.integers(0, len(captions), cfg.batch)
        z0 = sample_latents(means, stds, idx, scale)
        flow = sample_latents(flow_means, flow_stds, idx, scale)  # the pipeline samples the flow posterior too
        embeds = torch.stack([table["" if rng.random() < cfg.caption_dropout else captions[i]] for i in idx])
        loss = tora_v_loss(pipe, modules, z0, flow, embeds)
        take_step(opt, loss, params)
        warmup.step()
        log.add(step, loss.item())
        step += 1
        if time.time() > next_checkpoint:
            save_tora(modules, cfg.out)
            next_checkpoint = time.time() + 60 * cfg.checkpoint_minutes
            print(f"checkpoint at step {step}", flush=True)
    log.close()
    return save_tora(modules.eval(), cfg.out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", type=Path, required=True, help="the frozen toy-cogvideox folder (train_cogvideox's model/)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--minutes", type=float, default=25.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=ToraTrainConfig.steps)
    p.add_argument("--clip-pool", type=int, default=ToraTrainConfig.clip_pool)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)  # the machine is shared
    cfg = ToraTrainConfig(base=a.base, out=a.out, seed=a.seed, minutes=a.minutes, steps=a.steps,
                          clip_pool=a.clip_pool)
    cfg.out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    path = train_tora(cfg, start + 60 * cfg.minutes)
    print(f"saved {path} after {(time.time() - start) / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
