"""Tora's motion conditioning for CogVideoX DiTs (ALGORITHMS.md §3, "Tora"; Zhang et al., 2024).

The flow video (flowmap.py) is encoded by the video VAE to latents z (B, F', C=16, h, w). Then

* **Trajectory Extractor**: patchify (pt × 2 × 2: z → (C·pt·2·2) channels on the DiT's token grid),
  a 3×3 conv to `feature_channels` (128), then per DiT layer `blocks_per_layer` (2) residual blocks
  `x + conv(relu(BN(conv(relu(BN(x))))))`; the map after layer i's blocks is layer i's motion feature.
* **Motion-guidance Fuser** (one per DiT block), applied to the output of the block's `norm1`
  (the modulated, normalised video tokens) before self-attention:

      h ← h + GroupNorm₃₂(h) · γ + β,   γ, β = Conv1dₜ(Conv2dₛ(feature)),

  a 3×3 spatial conv to hidden/4 channels then a k=3 temporal conv (replicate padding) to hidden
  channels. The temporal convs start at zero, so an untrained fuser is exactly the identity.

Installation is by forward hooks on each block's `norm1` (replace its first output) — removable, no
class swapped. Motion features do not depend on the timestep, so they are computed once per
generation; under classifier-free guidance both halves get the same features, as in Tora.

**Published weights** (Tora's diffusers version, `ToraTransformer3DModel` in alibaba/Tora
`diffusers-version/tora/`): the transformer checkpoint holds, next to CogVideoX's own parameters,
`traj_extractor.*` (`TrajExtractor(patch_size=2, patch_size_t=1, nums_rb=2, cin=16,
channels=[128]*num_layers, sk=True, use_conv=False)`, residual blocks without in/skip convs) and
`fuser.{i}.*` (`MGF(128, inner_dim)`). The name map we assume (ours ↔ theirs):

    extractor.stem.*              ↔ traj_extractor.conv_in.*
    extractor.blocks.{k}.norm1.*  ↔ traj_extractor.body.{k}.bn1.*   (BatchNorm2d, running stats too)
    extractor.blocks.{k}.conv1.*  ↔ traj_extractor.body.{k}.block1.*
    extractor.blocks.{k}.norm2.*  ↔ traj_extractor.body.{k}.bn2.*
    extractor.blocks.{k}.conv2.*  ↔ traj_extractor.body.{k}.block2.*
    fusers.{i}.gamma_spatial.*    ↔ fuser.{i}.flow_gamma_spatial.*
    fusers.{i}.gamma_temporal.*   ↔ fuser.{i}.flow_gamma_temporal.*
    fusers.{i}.beta_spatial.*     ↔ fuser.{i}.flow_beta_spatial.*
    fusers.{i}.beta_temporal.*    ↔ fuser.{i}.flow_beta_temporal.*
    fusers.{i}.norm.*             ↔ fuser.{i}.flow_cond_norm.*

with block k = i · blocks_per_layer + j. Patchified channels are ordered (C, pt, ph, pw) as theirs.
"""
from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

PUBLISHED_PREFIXES = ("traj_extractor.", "fuser.")


@dataclass(frozen=True)
class ToraConfig:
    num_layers: int  # DiT blocks (one motion feature and one fuser each)
    hidden_dim: int  # DiT inner dim = heads × head dim
    latent_channels: int = 16  # of the video VAE that encodes the flow video
    patch_size: int = 2
    patch_size_t: int = 1  # CogVideoX 1.0: 1; CogVideoX 1.5: 2
    feature_channels: int = 128
    blocks_per_layer: int = 2
    norm_groups: int = 32

    @property
    def patch_channels(self) -> int:
        return self.latent_channels * self.patch_size_t * self.patch_size ** 2


class MotionResBlock(nn.Module):
    """x + conv2(relu(norm2(conv1(relu(norm1(x)))))) — Tora's residual block with `sk=True`."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.relu(self.norm1(x)))
        return x + self.conv2(F.relu(self.norm2(h)))


def patchify_flow_latents(z: torch.Tensor, patch_size: int, patch_size_t: int) -> torch.Tensor:
    """(B, F', C, h, w) flow latents → (B·T, C·pt·p·p, h/p, w/p) on the DiT's token grid (zero-padded up)."""
    z = z.permute(0, 2, 1, 3, 4)  # B C F h w
    pad_t, pad_h, pad_w = (-z.shape[2]) % patch_size_t, (-z.shape[3]) % patch_size, (-z.shape[4]) % patch_size
    if pad_t or pad_h or pad_w:
        z = F.pad(z, (0, pad_w, 0, pad_h, 0, pad_t))
    b, c, t, h, w = z.shape
    p, pt = patch_size, patch_size_t
    z = z.reshape(b, c, t // pt, pt, h // p, p, w // p, p).permute(0, 1, 3, 5, 7, 2, 4, 6)
    z = z.reshape(b, c * pt * p * p, t // pt, h // p, w // p)
    return z.permute(0, 2, 1, 3, 4).reshape(b * (t // pt), c * pt * p * p, h // p, w // p)


class TrajectoryExtractor(nn.Module):
    def __init__(self, config: ToraConfig):
        super().__init__()
        self.config = config
        self.stem = nn.Conv2d(config.patch_channels, config.feature_channels, 3, padding=1)
        self.blocks = nn.ModuleList(MotionResBlock(config.feature_channels)
                                    for _ in range(config.num_layers * config.blocks_per_layer))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):  # Tora initialises its extractor convs this way
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def forward(self, flow_latents: torch.Tensor) -> list[torch.Tensor]:
        """Flow latents (B, F', C, h, w) → one (B·T, feature_channels, h/p, w/p) map per DiT layer."""
        x = self.stem(patchify_flow_latents(flow_latents, self.config.patch_size, self.config.patch_size_t))
        features = []
        per_layer = self.config.blocks_per_layer
        for layer in range(self.config.num_layers):
            for block in self.blocks[layer * per_layer:(layer + 1) * per_layer]:
                x = block(x)
            features.append(x)
        return features


class MotionGuidanceFuser(nn.Module):
    def __init__(self, config: ToraConfig):
        super().__init__()
        hidden, quarter = config.hidden_dim, config.hidden_dim // 4
        self.gamma_spatial = nn.Conv2d(config.feature_channels, quarter, 3, padding=1)
        self.beta_spatial = nn.Conv2d(config.feature_channels, quarter, 3, padding=1)
        self.gamma_temporal = nn.Conv1d(quarter, hidden, 3, padding=1, padding_mode="replicate")
        self.beta_temporal = nn.Conv1d(quarter, hidden, 3, padding=1, padding_mode="replicate")
        self.norm = nn.GroupNorm(config.norm_groups, hidden)
        for conv in (self.gamma_temporal, self.beta_temporal):  # zero: an untrained fuser is the identity
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def _modulation(self, spatial: nn.Conv2d, temporal: nn.Conv1d, feature: torch.Tensor, frames: int) -> torch.Tensor:
        m = spatial(feature)  # (B·T, c, H, W)
        bt, c, h, w = m.shape
        m = m.reshape(bt // frames, frames, c, h, w).permute(0, 3, 4, 2, 1).reshape(-1, c, frames)
        m = temporal(m)  # over frames, at every location
        c = m.shape[1]
        return m.reshape(bt // frames, h, w, c, frames).permute(0, 4, 3, 1, 2).reshape(bt, c, h, w)

    def forward(self, h: torch.Tensor, feature: torch.Tensor, frames: int) -> torch.Tensor:
        """h, feature: (B·T, ·, H, W) → h + GroupNorm(h)·γ + β (the norm in float32, as Tora's)."""
        gamma = self._modulation(self.gamma_spatial, self.gamma_temporal, feature, frames)
        beta = self._modulation(self.beta_spatial, self.beta_temporal, feature, frames)
        # contiguous: the tokens arrive as a channels-last view, and torch's channels-last GroupNorm
        # backward crashes (SIGSEGV, torch 2.13 CPU) when the input itself needs no gradient (a frozen DiT)
        normed = F.group_norm(h.float().contiguous(), self.norm.num_groups, self.norm.weight.float(), self.norm.bias.float(),
                              self.norm.eps).to(h.dtype)
        return h + normed * gamma + beta


class ToraModules(nn.Module):
    def __init__(self, config: ToraConfig):
        super().__init__()
        self.config = config
        self.extractor = TrajectoryExtractor(config)
        self.fusers = nn.ModuleList(MotionGuidanceFuser(config) for _ in range(config.num_layers))


# ------------------------------------------------------------------------------------ installation
def _fuse_hook(fuser: MotionGuidanceFuser, feature: torch.Tensor):
    def hook(module, args, output):
        tokens = output[0]  # (rows, T·H·W, C): the modulated video tokens from norm1
        bt, _, gh, gw = feature.shape
        rows, n, channels = tokens.shape
        frames = n // (gh * gw)
        feat = feature.to(tokens.dtype)
        if rows * frames != bt:  # CFG (or several clips): every row gets the same motion features
            feat = feat.reshape(bt // frames, frames, *feat.shape[1:]).repeat(rows * frames // bt, 1, 1, 1, 1)
            feat = feat.reshape(rows * frames, *feature.shape[1:])
        h = tokens.reshape(rows, frames, gh, gw, channels).permute(0, 1, 4, 2, 3)
        h = h.reshape(rows * frames, channels, gh, gw)
        h = fuser(h, feat, frames)
        fused = h.reshape(rows, frames, channels, gh, gw).permute(0, 1, 3, 4, 2).reshape(rows, n, channels)
        return (fused, *output[1:])
    return hook


@contextlib.contextmanager
def tora_installed(transformer: nn.Module, modules: ToraModules, features: list[torch.Tensor]) -> Iterator[None]:
    """Fuse layer i's motion feature after block i's `norm1` while inside; hooks are always removed."""
    blocks = transformer.transformer_blocks
    if len(blocks) != len(modules.fusers) or len(features) != len(blocks):
        raise ValueError(f"Tora modules for {len(modules.fusers)} layers ({len(features)} features) do not fit a "
                         f"transformer with {len(blocks)} blocks")
    handles = [block.norm1.register_forward_hook(_fuse_hook(fuser, feature))
               for block, fuser, feature in zip(blocks, modules.fusers, features)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def motion_features(modules: ToraModules, flow_latents: torch.Tensor) -> list[torch.Tensor]:
    """The extractor in inference mode (BatchNorm on its running statistics)."""
    modules.eval()
    with torch.no_grad():
        return modules.extractor(flow_latents)


# ----------------------------------------------------------------------------- published weights
_NAME_MAP: tuple[tuple[str, str], ...] = (  # (ours, theirs) name prefixes; {n} is a layer/block number
    ("extractor.stem.", "traj_extractor.conv_in."),
    ("extractor.blocks.{n}.norm1.", "traj_extractor.body.{n}.bn1."),
    ("extractor.blocks.{n}.conv1.", "traj_extractor.body.{n}.block1."),
    ("extractor.blocks.{n}.norm2.", "traj_extractor.body.{n}.bn2."),
    ("extractor.blocks.{n}.conv2.", "traj_extractor.body.{n}.block2."),
    ("fusers.{n}.gamma_spatial.", "fuser.{n}.flow_gamma_spatial."),
    ("fusers.{n}.gamma_temporal.", "fuser.{n}.flow_gamma_temporal."),
    ("fusers.{n}.beta_spatial.", "fuser.{n}.flow_beta_spatial."),
    ("fusers.{n}.beta_temporal.", "fuser.{n}.flow_beta_temporal."),
    ("fusers.{n}.norm.", "fuser.{n}.flow_cond_norm."),
)


def _translate(name: str, to_published: bool) -> str:
    for ours, theirs in _NAME_MAP:
        src, dst = (ours, theirs) if to_published else (theirs, ours)
        pattern = re.escape(src).replace(re.escape("{n}"), r"(?P<n>\d+)") + r"(?P<rest>[A-Za-z_]+)"
        m = re.fullmatch(pattern, name)
        if m:
            return dst.format(n=m.groupdict().get("n")) + m.group("rest")
    raise KeyError(name)


def published_name(name: str) -> str:
    """Our parameter name → Tora's diffusers checkpoint name."""
    try:
        return _translate(name, to_published=True)
    except KeyError:
        raise KeyError(f"no published Tora name for our parameter '{name}'") from None


def our_name(name: str) -> str:
    """Tora's checkpoint name → ours (KeyError for a name Tora's diffusers modules do not have)."""
    try:
        return _translate(name, to_published=False)
    except KeyError:
        raise KeyError(f"'{name}' is not a parameter of Tora's diffusers modules (trajectory extractor with "
                       "sk=True, motion-guidance fusers)") from None


def to_published_state_dict(modules: ToraModules) -> dict[str, torch.Tensor]:
    return {published_name(k): v for k, v in modules.state_dict().items()}


def config_from_published(state: dict[str, torch.Tensor], latent_channels: int, patch_size: int) -> ToraConfig:
    """Layer count, widths and blocks per layer read off the weights' names and shapes."""
    layers = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("fuser."))
    blocks = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("traj_extractor.body."))
    stem = state["traj_extractor.conv_in.weight"]
    patch_t = stem.shape[1] // (latent_channels * patch_size ** 2)
    return ToraConfig(num_layers=layers, hidden_dim=int(state["fuser.0.flow_gamma_temporal.weight"].shape[0]),
                      latent_channels=latent_channels, patch_size=patch_size, patch_size_t=max(1, patch_t),
                      feature_channels=int(stem.shape[0]), blocks_per_layer=blocks // layers)


def modules_from_published(state: dict[str, torch.Tensor], latent_channels: int, patch_size: int) -> ToraModules:
    """Build and load our modules from Tora-named tensors (non-Tora names are ignored)."""
    state = {k: v for k, v in state.items() if k.startswith(PUBLISHED_PREFIXES)}
    if not state:
        raise KeyError("no Tora parameters (traj_extractor.*, fuser.*) in these weights")
    modules = ToraModules(config_from_published(state, latent_channels, patch_size))
    modules.load_state_dict({our_name(k): v for k, v in state.items()}, strict=True)
    return modules.eval()


def tora_weight_files(folder: str | Path) -> list[Path]:
    """Safetensors files under `folder` (a model folder, its `tora/` or `transformer/`) that hold Tora keys."""
    from safetensors import safe_open

    root = Path(folder)
    for candidate in (root / "tora", root / "transformer", root):
        if not candidate.is_dir():
            continue
        index = next(candidate.glob("*.safetensors.index.json"), None)
        if index is not None:  # sharded: the index names each tensor's file
            weight_map = json.loads(index.read_text()).get("weight_map", {})
            names = sorted({f for k, f in weight_map.items() if k.startswith(PUBLISHED_PREFIXES)})
            if names:
                return [candidate / n for n in names]
            continue
        found = []
        for file in sorted(candidate.glob("*.safetensors")):
            with safe_open(str(file), framework="pt") as f:
                if any(k.startswith(PUBLISHED_PREFIXES) for k in f.keys()):
                    found.append(file)
        if found:
            return found
    return []


def load_tora_weights(folder: str | Path, latent_channels: int, patch_size: int) -> ToraModules | None:
    """Tora modules from the published (or our tiny) weights under `folder`; None when there are none."""
    from safetensors import safe_open

    files = tora_weight_files(folder)
    if not files:
        return None
    state: dict[str, torch.Tensor] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            state.update({k: f.get_tensor(k) for k in f.keys() if k.startswith(PUBLISHED_PREFIXES)})
    return modules_from_published(state, latent_channels, patch_size)
