"""`--compile` and `--channels-last` (#21): flags → server config → registry → the denoiser; same frames."""
from __future__ import annotations

import pytest
import torch

from cinegen.server.cli import build_parser
from cinegen.server.diffusion.sampler import DenoiseLoop
from cinegen.server.job_client import server_config
from cinegen.server.models.registry import ModelRegistry
from cinegen.server.models.speedups import Speedups, conv2d_share, is_compiled


def _fresh(tiny_model_cache, model_id: str, speedups: Speedups | None = None):
    """A model of its own: the speed-ups change the module in place, the session registry's must stay plain."""
    return ModelRegistry(use_hf_cache=False, cache_dir=tiny_model_cache, speedups=speedups).get(model_id)


def _frames(adapter, width: int, height: int, frames: int = 1, steps: int = 2) -> torch.Tensor:
    cond = adapter.encode_prompt("a red disc", "", 5.0)
    scheduler = adapter.new_scheduler()
    scheduler.set_timesteps(steps)
    shape = adapter.latent_shape(1, width, height, frames) if adapter.kind == "video" else \
        adapter.latent_shape(1, width, height)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)) * scheduler.init_noise_sigma
    latent = DenoiseLoop(scheduler, lambda z, t: adapter.predict(z, t, cond)).run(x)
    return adapter.decode(latent)


def test_the_flags_reach_the_server_config_and_its_registry(monkeypatch):
    args = build_parser().parse_args(["serve", "--compile", "eager", "--channels-last", "--no-hf-cache"])
    config = server_config(args)
    assert (config.compile, config.channels_last) == ("eager", True)
    assert build_parser().parse_args(["serve", "--compile"]).compile == "inductor"
    plain = server_config(build_parser().parse_args(["serve"]))
    assert (plain.compile, plain.channels_last) == (None, False)
    with pytest.raises(SystemExit):  # a backend torch.compile does not have is refused by the parser
        build_parser().parse_args(["serve", "--compile", "tensorrt"])

    from cinegen.server import service

    class Built(Exception):
        pass

    def registry(*args, **kwargs):  # the service's registry, caught as it is built (nothing else is started)
        raise Built(kwargs["speedups"])

    monkeypatch.setattr(service, "ModelRegistry", registry)
    with pytest.raises(Built) as built:
        service.GeneratorService(config)
    assert built.value.args[0] == Speedups("eager", None, True)


def test_channels_last_goes_to_unets_and_not_to_dits(tiny_model_cache):
    sd = _fresh(tiny_model_cache, "tiny-sd", Speedups(channels_last=True))
    conv = next(m for m in sd.denoiser.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not conv.weight.is_contiguous()  # really NHWC, not a 1×1 weight that is both
    wan = _fresh(tiny_model_cache, "tiny-wan", Speedups(channels_last=True))
    assert conv2d_share(wan.denoiser) < 0.25 and all(p.is_contiguous() for p in wan.denoiser.parameters())
    assert not is_compiled(sd.denoiser)  # compile is off unless asked for (compiling: the slow test below)


def test_channels_last_gives_the_same_frames(tiny_model_cache):
    plain = _frames(_fresh(tiny_model_cache, "tiny-sd"), 64, 64)
    nhwc = _frames(_fresh(tiny_model_cache, "tiny-sd", Speedups(channels_last=True)), 64, 64)
    # NHWC convolutions sum in another order: float32 rounding (1.4e-5 seen on one UNet call)
    torch.testing.assert_close(nhwc, plain, rtol=0, atol=1e-4)


@pytest.mark.slow  # dynamo traces the denoiser on the first call: several seconds even for a 1-layer DiT
def test_a_compiled_denoiser_gives_the_same_frames(tiny_model_cache):
    torch._dynamo.reset()
    plain = _frames(_fresh(tiny_model_cache, "tiny-wan"), 32, 32, frames=5)
    compiled_model = _fresh(tiny_model_cache, "tiny-wan", Speedups(compile="eager"))
    compiled = _frames(compiled_model, 32, 32, frames=5)
    assert is_compiled(compiled_model.denoiser)
    # The eager backend runs the traced graph's aten ops, the same kernels in the same order: bit-equal.
    assert torch.equal(compiled, plain)
