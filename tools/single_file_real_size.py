"""Measure: a real-size single file of a shipped kind, random fp16 weights, loaded offline as a real one is.

    .venv/bin/python tools/single_file_real_size.py sd1|sd2-v|sd2-base|sdxl|sdxl-refiner [--dir DIR]

Builds the kind's UNet, VAE and text encoders from `models/configs/single-file/NAME` on the meta device,
fills them with seeded random fp16 weights, writes them under their original (LDM/SGM) names with the
test suite's inverse conversion (`tests/ldm_layout.py`), then loads the file through
`single_file.load_single_file` with the shipped config (no `.config` folder) and prints the file size,
the load time, the tokenizer's ids for "a photo of a cat", the parameter counts and the peak RSS.
The file is deleted afterwards. No network, no real weights.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from ldm_layout import TE_PREFIX, clip_to_ldm, openclip_to_ldm, unet_to_ldm, vae_to_ldm  # noqa: E402


def random_fp16(module: torch.nn.Module, gen: torch.Generator) -> torch.nn.Module:
    module = module.to(torch.float16).to_empty(device="cpu")
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen).mul_(0.02).to(torch.float16))
    return module


def main() -> int:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from cinegen.server.models.single_file import SHIPPED_CONFIGS, load_single_file, shipped_config_name

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(p.name for p in SHIPPED_CONFIGS.iterdir()))
    parser.add_argument("--dir", default=tempfile.gettempdir())
    args = parser.parse_args()
    name, folder = args.name, SHIPPED_CONFIGS / args.name
    kind = "sd2" if name.startswith("sd2") else name
    gen = torch.Generator().manual_seed(0)
    start = time.time()
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(json.loads((folder / "unet/config.json").read_text()))
        vae = AutoencoderKL.from_config(json.loads((folder / "vae/config.json").read_text()))
    ldm = unet_to_ldm(random_fp16(unet, gen).state_dict(), dict(unet.config))
    ldm.update(vae_to_ldm(random_fp16(vae, gen).state_dict(), dict(vae.config)))
    index = json.loads((folder / "model_index.json").read_text())
    for te, (prefix, layout) in TE_PREFIX[kind].items():
        cls = CLIPTextModelWithProjection if index[te][1].endswith("Projection") else CLIPTextModel
        with torch.device("meta"):
            model = cls(CLIPTextConfig.from_pretrained(str(folder / te)))
        state = random_fp16(model, gen).state_dict()
        ldm.update(clip_to_ldm(state, prefix) if layout == "clip" else openclip_to_ldm(state, prefix))
    path = Path(args.dir) / f"cinegen-real-size-{name}.safetensors"
    save_file({k: v.contiguous() for k, v in ldm.items()}, str(path))
    print(f"{name}: wrote {path.stat().st_size / 2**30:.2f} GiB, {len(ldm)} tensors in {time.time() - start:.1f} s")
    try:
        start = time.time()
        pipe = load_single_file(path, kind, torch.float16)
        print(f"{name}: {type(pipe).__name__} from the shipped '{shipped_config_name(path, kind)}' config "
              f"in {time.time() - start:.1f} s")
        tok = pipe.tokenizer if getattr(pipe, "tokenizer", None) is not None else pipe.tokenizer_2
        print(f"  tokenizer {type(tok).__name__} of {len(tok)}: {tok('a photo of a cat').input_ids}")
        parts = {n: c for n, c in pipe.components.items() if isinstance(c, torch.nn.Module)}
        print("  parameters:", {n: sum(p.numel() for p in c.parameters()) for n, c in parts.items()})
        print("  conv_in as written:", torch.equal(pipe.unet.conv_in.weight, ldm["model.diffusion_model.input_blocks.0.0.weight"]))
        print(f"  peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GiB")
    finally:
        path.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
