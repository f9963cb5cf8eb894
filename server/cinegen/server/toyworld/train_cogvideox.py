"""Train the `toy-cogvideox` model on CPU: a tiny CogVideoX (3-D causal VAE + video DiT) on toy-world clips.

Stage 1 (VAE, `AutoencoderKLCogVideoX`, 4× in space and 4× in time after a first frame kept alone):
L1 + MSE reconstruction of 9-frame 64 px clips plus a tiny KL term, as toy-image's VAE. A share of the
batches are flow videos of the clips' own tracks (flowmap.py, the condition Tora encodes with this same
VAE), so the VAE has seen them; the latent scaling factor is then 1/std of the encoded clips.
Stage 2 (transformer, `CogVideoXTransformer3DModel`, the frozen VAE and a frozen seeded T5): CogVideoX's
objective, v-prediction on its zero-terminal-SNR scaled-linear schedule,

    L = E || v - v_theta(sqrt(a_t) z0 + sqrt(1 - a_t) eps, t, T5(caption)) ||^2,   v = sqrt(a_t) eps - sqrt(1 - a_t) z0

with z0 (B, F'=3, C, h, w) and one t per clip. diffusers' CogVideoX fine-tuning script writes the same loss
as an x0 error weighted by 1/(1 - a_t), which equals this one term for term. Captions are dropped to ""
10 % of the time so classifier-free guidance works. The whole pipeline folder is saved every
`checkpoint_minutes`, so a usable model exists before the budget ends.
Stage 3 (`--stage decoder`, optional, may run beside stage 2): the decoder alone fine-tuned on the frozen
encoder's mean latents, as toy-image's decoder was; the latent space the DiT and Tora learned on does not
move. It writes `OUT/vae_decoder/`, which the export (report_cogvideox.py) puts in place of the VAE.

    python -m cinegen.server.toyworld.train_cogvideox --out DIR --minutes 40 --seed 0 --threads 1
    python -m cinegen.server.toyworld.train_cogvideox --out DIR --stage decoder --minutes 12 --threads 1
"""
from __future__ import annotations

import argparse
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .clips import ClipParams, clip_for, render_clip
from .train_image import LossLog, sample_latents, take_step
from .world import caption

NATIVE = 64
FRAMES = 9  # 4k + 1: three latent frames
LATENT_CHANNELS = 8
TEXT_LENGTH = 48  # T5 tokens: the longest toy caption is 34 characters
CLIP_PARAMS = ClipParams(frames=FRAMES)
DECODER_DIR = "vae_decoder"  # stage 3's VAE (the same encoder, the fine-tuned decoder)


@dataclass(frozen=True)
class CogTrainConfig:
    out: Path
    seed: int = 0
    minutes: float = 40.0
    vae_fraction: float = 0.3  # share of the time budget for the VAE
    vae_batch: int = 4
    vae_lr: float = 1e-3
    flow_share: float = 0.25  # of the VAE's batch: flow videos of the clips' tracks
    kl_weight: float = 1e-6
    batch: int = 16
    lr: float = 5e-4
    warmup: int = 200
    clip_pool: int = 3000
    caption_dropout: float = 0.1
    checkpoint_minutes: float = 5.0
    vae_steps: int = 10 ** 9  # caps below the time budget (tests)
    steps: int = 10 ** 9


def build_vae():
    from diffusers import AutoencoderKLCogVideoX

    return AutoencoderKLCogVideoX(
        block_out_channels=(16, 32, 32), down_block_types=("CogVideoXDownBlock3D",) * 3,
        up_block_types=("CogVideoXUpBlock3D",) * 3, latent_channels=LATENT_CHANNELS, layers_per_block=1,
        norm_num_groups=8, temporal_compression_ratio=4, sample_height=NATIVE, sample_width=NATIVE)


def build_transformer():
    from diffusers import CogVideoXTransformer3DModel

    return CogVideoXTransformer3DModel(
        num_attention_heads=4, attention_head_dim=32, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
        time_embed_dim=128, text_embed_dim=32, num_layers=4, sample_width=NATIVE // 4, sample_height=NATIVE // 4,
        sample_frames=FRAMES, patch_size=2, max_text_seq_length=TEXT_LENGTH, use_rotary_positional_embeddings=True)


def build_scheduler():
    from diffusers import CogVideoXDDIMScheduler

    # CogVideoX-5B's scheduler: v-prediction, zero terminal SNR
    return CogVideoXDDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                  clip_sample=False, prediction_type="v_prediction", rescale_betas_zero_snr=True,
                                  set_alpha_to_one=True, snr_shift_scale=1.0, timestep_spacing="trailing")


def build_pipeline(seed: int, vae=None, transformer=None):
    """The toy CogVideoX pipeline; the T5 text encoder is seeded and never trained (CogVideoX freezes its T5)."""
    from diffusers import CogVideoXPipeline

    from ..models.cogvideox import tiny_t5_encoder, tiny_t5_tokenizer

    tokenizer = tiny_t5_tokenizer()
    torch.manual_seed(seed)
    text_encoder = tiny_t5_encoder(len(tokenizer))
    torch.manual_seed(seed + 1)
    vae = vae if vae is not None else build_vae()
    torch.manual_seed(seed + 2)
    transformer = transformer if transformer is not None else build_transformer()
    return CogVideoXPipeline(tokenizer=tokenizer, text_encoder=text_encoder.eval(), vae=vae, transformer=transformer,
                             scheduler=build_scheduler())


def clip_tracks(clip, size: int) -> torch.Tensor:
    """(K, F, 2) top-left pixel centres of the clip's objects (the tracks the toy world knows)."""
    return torch.from_numpy(clip.paths * size).float()


def clip_flow_video(clip, size: int) -> torch.Tensor:
    """(F, 3, H, W) in [-1, 1]: the clip's tracks as Tora's flow video (99 px / sigma 10, the inference default)."""
    from ..diffusion.flowmap import TORA_GAUSSIAN, flow_video

    return flow_video(clip_tracks(clip, size), clip.frames, size, size, spread=TORA_GAUSSIAN)


def clip_video(clip, size: int) -> torch.Tensor:
    """(3, F, H, W) in [-1, 1], the layout the CogVideoX VAE encodes."""
    return torch.from_numpy(render_clip(clip, size)).permute(3, 0, 1, 2) * 2 - 1


def _vae_batch(cfg: CogTrainConfig, rng: np.random.Generator) -> torch.Tensor:
    videos = []
    for _ in range(cfg.vae_batch):
        clip = clip_for(cfg.seed + 1, int(rng.integers(0, 10 ** 9)), CLIP_PARAMS)
        if rng.random() < cfg.flow_share:
            videos.append(clip_flow_video(clip, NATIVE).permute(1, 0, 2, 3))
        else:
            videos.append(clip_video(clip, NATIVE))
    return torch.stack(videos)


def train_vae(vae, cfg: CogTrainConfig, deadline: float) -> None:
    torch.manual_seed(cfg.seed + 3)
    rng = np.random.default_rng(cfg.seed + 4)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    log = LossLog(cfg.out / "vae_loss.csv")
    vae.train()
    step = 0
    while time.time() < deadline and step < cfg.vae_steps:
        x = _vae_batch(cfg, rng)
        dist = vae.encode(x).latent_dist
        y = vae.decode(dist.sample()).sample
        rec = (y - x).abs().mean() + (y - x).pow(2).mean()
        loss = rec + cfg.kl_weight * dist.kl().mean()
        take_step(opt, loss, list(vae.parameters()))
        log.add(step, rec.item())
        step += 1
    log.close()
    vae.eval()


def encode_pool(vae, cfg: CogTrainConfig, flow: bool = False, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std (N, F', C, h, w) of the pooled clips (or of their flow videos)."""
    means, stds = [], []
    with torch.no_grad():
        for first in range(start, start + cfg.clip_pool, 8):
            clips = [clip_for(cfg.seed + 1, i, CLIP_PARAMS) for i in range(first, min(first + 8, start + cfg.clip_pool))]
            x = torch.stack([clip_flow_video(c, NATIVE).permute(1, 0, 2, 3) if flow else clip_video(c, NATIVE)
                             for c in clips])
            dist = vae.encode(x).latent_dist
            means.append(dist.mean.permute(0, 2, 1, 3, 4))
            stds.append(dist.std.permute(0, 2, 1, 3, 4))
    return torch.cat(means), torch.cat(stds)


def pool_captions(cfg: CogTrainConfig, start: int = 0) -> list[str]:
    return [caption(clip_for(cfg.seed + 1, i, CLIP_PARAMS).scene) for i in range(start, start + cfg.clip_pool)]


def caption_table(pipe, captions: list[str]) -> dict[str, torch.Tensor]:
    """T5 embeddings of each distinct caption and of "", encoded as the pipeline encodes prompts."""
    distinct = sorted(set(captions)) + [""]
    with torch.no_grad():
        embeds, _ = pipe.encode_prompt(distinct, do_classifier_free_guidance=False, max_sequence_length=TEXT_LENGTH,
                                       device=torch.device("cpu"))
    return dict(zip(distinct, embeds))


def v_loss(pipe, z0: torch.Tensor, embeds: torch.Tensor, noise: torch.Tensor | None = None,
           t: torch.Tensor | None = None) -> torch.Tensor:
    """CogVideoX's v-prediction MSE for clean latents z0 (B, F', C, h, w) under `embeds` (B, L, D)."""
    sched = pipe.scheduler
    noise = torch.randn_like(z0) if noise is None else noise
    if t is None:
        t = torch.randint(0, sched.config.num_train_timesteps, (z0.shape[0],))
    noisy = sched.add_noise(z0, noise, t)  # broadcasts over the dims after the first: one t per clip
    rotary = pipe._prepare_rotary_positional_embeddings(z0.shape[3] * pipe.vae_scale_factor_spatial,
                                                        z0.shape[4] * pipe.vae_scale_factor_spatial, z0.shape[1],
                                                        torch.device("cpu"))
    pred = pipe.transformer(hidden_states=noisy, encoder_hidden_states=embeds, timestep=t, image_rotary_emb=rotary,
                            return_dict=False)[0]
    return (pred - sched.get_velocity(z0, noise, t)).pow(2).mean()


def save_checkpoint(pipe, folder: Path) -> None:
    """Write the pipeline (or model) folder beside `folder` and swap it in, so a reader never sees half a model."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(str(tmp), safe_serialization=True)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def train_transformer(pipe, cfg: CogTrainConfig, deadline: float) -> None:
    means, stds = encode_pool(pipe.vae, cfg)
    captions = pool_captions(cfg)
    table = caption_table(pipe, captions)
    print(f"encoded {len(captions)} clips of {FRAMES} frames to {tuple(means.shape[1:])} latents", flush=True)
    transformer = pipe.transformer.train()
    params = list(transformer.parameters())
    print(f"training {sum(p.numel() for p in params)} transformer parameters", flush=True)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    warmup = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / cfg.warmup))
    torch.manual_seed(cfg.seed + 5)
    rng = np.random.default_rng(cfg.seed + 6)
    scale = pipe.vae.config.scaling_factor
    log = LossLog(cfg.out / "transformer_loss.csv")
    next_checkpoint = time.time() + 60 * cfg.checkpoint_minutes
    step = 0
    while time.time() < deadline and step < cfg.steps:
        idx = rng.integers(0, len(captions), cfg.batch)
        z0 = sample_latents(means, stds, idx, scale)
        embeds = torch.stack([table["" if rng.random() < cfg.caption_dropout else captions[i]] for i in idx])
        loss = v_loss(pipe, z0, embeds)
        take_step(opt, loss, params)
        warmup.step()
        log.add(step, loss.item())
        step += 1
        if time.time() > next_checkpoint:
            transformer.eval()
            save_checkpoint(pipe, cfg.out / "model")
            transformer.train()
            next_checkpoint = time.time() + 60 * cfg.checkpoint_minutes
            print(f"checkpoint at step {step}", flush=True)
    log.close()
    transformer.eval()


def train_decoder(vae, cfg: CogTrainConfig, deadline: float) -> None:
    """Stage 3: the decoder alone on the frozen encoder's mean latents (as Stability's ft-MSE VAE was made):
    sharper frames without moving the latent space the DiT (and Tora) were trained on."""
    torch.manual_seed(cfg.seed + 9)
    rng = np.random.default_rng(cfg.seed + 10)
    vae.requires_grad_(False)
    params = list(vae.decoder.parameters())
    for param in params:
        param.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=cfg.vae_lr / 2, weight_decay=0.0)
    log = LossLog(cfg.out / "decoder_loss.csv")
    vae.eval()  # no dropout or batch statistics in this VAE: eval only keeps the encoder out of training
    step = 0
    while time.time() < deadline and step < cfg.vae_steps:
        clips = [clip_for(cfg.seed + 1, int(rng.integers(0, 10 ** 9)), CLIP_PARAMS) for _ in range(cfg.vae_batch)]
        x = torch.stack([clip_video(c, NATIVE) for c in clips])
        with torch.no_grad():
            z = vae.encode(x).latent_dist.mean
        y = vae.decode(z).sample
        loss = (y - x).abs().mean() + (y - x).pow(2).mean()
        take_step(opt, loss, params)
        log.add(step, loss.item())
        step += 1
    log.close()
    vae.requires_grad_(False)


def set_latent_scale(vae, cfg: CogTrainConfig) -> float:
    """1/std of the encoded clips' latents, so the DiT sees unit-variance latents (as CogVideoX's 0.7 / 1.15)."""
    means, stds = encode_pool(vae, CogTrainConfig(out=cfg.out, seed=cfg.seed, clip_pool=min(128, cfg.clip_pool)))
    z = means + stds * torch.randn_like(means)
    vae.register_to_config(scaling_factor=float(1.0 / z.std()))
    return float(vae.config.scaling_factor)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--minutes", type=float, default=40.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--clip-pool", type=int, default=CogTrainConfig.clip_pool)
    p.add_argument("--vae-steps", type=int, default=CogTrainConfig.vae_steps)
    p.add_argument("--steps", type=int, default=CogTrainConfig.steps)
    p.add_argument("--stage", choices=("all", "decoder"), default="all",
                   help="decoder: fine-tune the decoder of OUT/model for --minutes (the latent space stays)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)  # the machine is shared
    cfg = CogTrainConfig(out=a.out, seed=a.seed, minutes=a.minutes, clip_pool=a.clip_pool,
                         vae_steps=a.vae_steps, steps=a.steps)
    cfg.out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    if a.stage == "decoder":  # may run beside the DiT stage: it reads OUT/model/vae and writes OUT/vae_decoder
        from diffusers import AutoencoderKLCogVideoX

        vae = AutoencoderKLCogVideoX.from_pretrained(str(cfg.out / "model" / "vae"), dtype=torch.float32,
                                                     local_files_only=True)
        train_decoder(vae, cfg, start + 60 * cfg.minutes)
        save_checkpoint(vae, cfg.out / DECODER_DIR)
        print(f"saved {cfg.out / DECODER_DIR} after {(time.time() - start) / 60:.1f} min", flush=True)
        return
    pipe = build_pipeline(cfg.seed)
    train_vae(pipe.vae, cfg, start + 60 * cfg.minutes * cfg.vae_fraction)
    print(f"VAE trained; latent scale {set_latent_scale(pipe.vae, cfg):.4f}", flush=True)
    pipe.transformer.eval()
    save_checkpoint(pipe, cfg.out / "model")  # the VAE alone is kept even if the DiT stage is cut short
    train_transformer(pipe, cfg, start + 60 * cfg.minutes)
    save_checkpoint(pipe, cfg.out / "model")
    print(f"saved {cfg.out / 'model'} after {(time.time() - start) / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
