"""Export toy-cogvideox (fp16, with its Tora weights, into the package), plot its losses, draw samples.

    python -m cinegen.server.toyworld.report_cogvideox --run DIR --tora DIR [--export] [--held-out] --docs docs/pictures/toyworld
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import torch

from .report import grid, plot_losses, read_losses

PROMPTS = ("a red disc", "a blue square", "a yellow disc", "a black square")
LOSSES = (("vae_loss.csv", "toy-cogvideox VAE reconstruction (L1 + MSE)", "cogvideox_vae_loss"),
          ("decoder_loss.csv", "toy-cogvideox decoder fine-tune (L1 + MSE)", "cogvideox_decoder_loss"),
          ("transformer_loss.csv", "toy-cogvideox DiT v-prediction loss", "cogvideox_dit_loss"))
TORA_LOSS = ("tora_loss.csv", "Tora extractor + fusers, v-prediction loss (DiT frozen)", "tora_loss")


def export_model(model: Path, tora_weights: Path, dest: Path, vae: Path | None = None) -> None:
    """The pipeline folder saved again in fp16 (with the decoder-tuned `vae` when given), and Tora's weights
    (published names) in fp16 under `tora/`."""
    from diffusers import AutoencoderKLCogVideoX, CogVideoXPipeline
    from safetensors.torch import load_file, save_file

    pipe = CogVideoXPipeline.from_pretrained(str(model), dtype=torch.float32, local_files_only=True)
    if vae is not None:
        pipe.vae = AutoencoderKLCogVideoX.from_pretrained(str(vae), dtype=torch.float32, local_files_only=True)
    pipe.to(torch.float16)
    if dest.exists():
        shutil.rmtree(dest)
    pipe.save_pretrained(str(dest), safe_serialization=True)
    (dest / "tora").mkdir()
    save_file({k: v.half().contiguous() for k, v in load_file(str(tora_weights)).items()},
              str(dest / "tora" / "diffusion_pytorch_model.safetensors"))


def load_adapter(folder: Path):
    from ..models.cogvideox import load_cogvideox
    from ..models.family import ModelEntry

    return load_cogvideox(ModelEntry("toy-cogvideox", "cogvideox", "folder", str(folder)), torch.device("cpu"),
                          torch.float32)


def sample_clip(adapter, prompt: str, seed: int, steps: int = 20) -> list[np.ndarray]:
    """Frames (H, W, 3) of one text-to-video run through the trajectory pipeline's loop, without Tora."""
    from ..pipelines.base import Resolved, seeded_generator
    from ..pipelines.trajectory import ToraInference, denoise_cogvideox, stock_noise

    w, h = adapter.native_size
    r = Resolved(prompt=prompt, negative_prompt="", model=adapter.entry.id, seed=seed, steps=steps, guidance=7.5,
                 width=w, height=h, frames=adapter.native_frames, fps=8.0, first_frame=0)
    generator = seeded_generator(seed)
    video = adapter.decode(denoise_cogvideox(adapter, r, stock_noise(adapter, r, generator), generator,
                                             ToraInference()))[0]
    return [video[:, f].permute(1, 2, 0).float().numpy() for f in range(video.shape[1])]


def reconstructions(adapter, count: int = 4) -> list[list[np.ndarray]]:
    """Held-out toy clips (data seed 1234) over their VAE reconstructions, row by row."""
    from .train_cogvideox import CLIP_PARAMS, NATIVE
    from .clips import clip_for, render_clip

    rows = []
    for i in range(count):
        frames = render_clip(clip_for(1234, i, CLIP_PARAMS), NATIVE)
        video = torch.from_numpy(frames).permute(0, 3, 1, 2)
        decoded = adapter.decode(adapter.encode(video))[0]
        rows.append(list(frames))
        rows.append([decoded[:, f].permute(1, 2, 0).numpy() for f in range(decoded.shape[1])])
    return rows


def held_out_tora_loss(folder: Path, clips: int = 96, seed: int = 0) -> dict:
    """v-loss of the frozen model with and without its Tora modules on held-out clips (data seed 1234) with
    their own tracks, the same noise and t on both sides, one clip at a time."""
    from ..diffusion.tora import load_tora_weights
    from .train_cogvideox import CogTrainConfig, caption_table, encode_pool, pool_captions, v_loss
    from .train_tora import load_base, tora_v_loss

    pipe = load_base(folder)
    modules = load_tora_weights(folder, latent_channels=int(pipe.vae.config.latent_channels),
                                patch_size=int(pipe.transformer.config.patch_size)).float().eval()
    pool = CogTrainConfig(out=folder, seed=1233, clip_pool=clips)  # clip_for(seed + 1 = 1234, i): never trained on
    (means, _), (flow, _) = encode_pool(pipe.vae, pool), encode_pool(pipe.vae, pool, flow=True)
    captions = pool_captions(pool)
    table = caption_table(pipe, captions)
    scale = pipe.vae.config.scaling_factor
    g = torch.Generator().manual_seed(seed)
    base, tora = [], []
    with torch.no_grad():
        for i in range(clips):
            z0, f, e = means[i:i + 1] * scale, flow[i:i + 1] * scale, table[captions[i]][None]
            noise, t = torch.randn(z0.shape, generator=g), torch.randint(0, 1000, (1,), generator=g)
            base.append(v_loss(pipe, z0, e, noise=noise, t=t).item())
            tora.append(tora_v_loss(pipe, modules, z0, f, e, noise=noise, t=t).item())
    b, o = np.array(base), np.array(tora)
    return {"clips": clips, "base": round(float(b.mean()), 4), "tora": round(float(o.mean()), 4),
            "tora_lower": int((o < b).sum())}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True, help="the --out folder of train_cogvideox")
    p.add_argument("--tora", type=Path, required=True, help="the --out folder of train_tora")
    p.add_argument("--docs", type=Path, required=True)
    p.add_argument("--export", action="store_true", help="copy the fp16 model into the package")
    p.add_argument("--held-out", action="store_true", help="also print the held-out v-loss with and without Tora")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    a.docs.mkdir(parents=True, exist_ok=True)
    for run, (csv_name, title, stem) in [(a.run, loss) for loss in LOSSES] + [(a.tora, TORA_LOSS)]:
        if not (run / csv_name).exists():  # the decoder stage is optional
            continue
        plot_losses(read_losses(run / csv_name), title, a.docs / f"{stem}.png")
        shutil.copy(run / csv_name, a.docs / f"{stem}.csv")
    from ..models.toy import TOY_COGVIDEOX_DIR

    from .train_cogvideox import DECODER_DIR

    if a.export:
        decoder = a.run / DECODER_DIR
        export_model(a.run / "model", a.tora / "tora" / "diffusion_pytorch_model.safetensors", TOY_COGVIDEOX_DIR,
                     vae=decoder if decoder.is_dir() else None)
    adapter = load_adapter(TOY_COGVIDEOX_DIR)
    grid(reconstructions(adapter), 2).save(a.docs / "cogvideox_vae_reconstructions.png")
    if a.held_out:
        print(f"held-out v-loss: {held_out_tora_loss(TOY_COGVIDEOX_DIR)}", flush=True)
    grid([sample_clip(adapter, prompt, seed) for prompt in PROMPTS for seed in (0, 1)], 2).save(
        a.docs / "cogvideox_samples.jpg", quality=90)  # noisy frames: a PNG would be 0.6 MB


if __name__ == "__main__":
    main()
