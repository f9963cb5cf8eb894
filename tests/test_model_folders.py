"""Model folders as a studio has them on disk: fp16-variant files only, tensors missing from a file, a
half-finished download. Each usable one loads with its own weights; each unusable one is refused with a
sentence naming the folder and what it lacks — never a traceback, never a model run on random weights.

The folders are copies of the tiny SD model (real diffusers/transformers classes, seeded weights),
changed the way the wild changes them.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from cinegen.server.errors import FailedPrecondition
from cinegen.server.models.registry import ModelRegistry, ensure_tiny_model


@pytest.fixture(scope="module")
def tiny_sd(tiny_model_cache) -> Path:
    from cinegen.server.models.families import all_families

    return ensure_tiny_model(all_families()["sd"].tiny[0], tiny_model_cache)


def _registry(root: Path, cache: Path) -> ModelRegistry:
    return ModelRegistry([root], use_hf_cache=False, cache_dir=cache)


def _drop_tensors(file: Path, part: str) -> None:
    tensors = load_file(str(file))
    save_file({k: v for k, v in tensors.items() if part not in k}, str(file), metadata={"format": "pt"})


def test_a_folder_of_fp16_variant_files_only_loads_its_own_weights(tiny_sd, tmp_path, tiny_model_cache):
    # what `--variant fp16` / allow_patterns="*fp16*" downloads: no plain weights beside the variant files
    folder = tmp_path / "models" / "sd-fp16"
    shutil.copytree(tiny_sd, folder)
    for plain in folder.glob("*/*.safetensors"):
        weights = {k: v.half() for k, v in load_file(str(plain)).items()}
        save_file(weights, str(plain.with_name(plain.stem + ".fp16.safetensors")), metadata={"format": "pt"})
        plain.unlink()
    adapter = _registry(folder.parent, tiny_model_cache).get("sd-fp16")
    expected = load_file(str(folder / "unet" / "diffusion_pytorch_model.fp16.safetensors"))
    loaded = adapter.pipe.unet.state_dict()
    assert all(torch.equal(loaded[k].half(), v) for k, v in expected.items())


@pytest.mark.parametrize("part, file, tensor", [
    ("text_encoder", "model.safetensors", "layers.1."),  # transformers would initialise them at random
    ("unet", "diffusion_pytorch_model.safetensors", "conv_out"),  # diffusers leaves them on the meta device
])
def test_a_file_lacking_tensors_is_refused_naming_the_part_not_run_on_random_weights(
        tiny_sd, tmp_path, tiny_model_cache, part, file, tensor):
    folder = tmp_path / "models" / "lacking"
    shutil.copytree(tiny_sd, folder)
    _drop_tensors(folder / part / file, tensor)
    with pytest.raises(FailedPrecondition, match=rf"'lacking' at .*its {part} lacks \d+ tensors.*{tensor}"):
        _registry(folder.parent, tiny_model_cache).get("lacking")


@pytest.mark.parametrize("damage, said", [
    ("remove", "unet/ has no weights"),
    ("truncate", "unet/diffusion_pytorch_model.safetensors is cut short"),
])
def test_a_half_downloaded_folder_is_refused_at_submit_naming_the_file(tiny_sd, tmp_path, tiny_model_cache,
                                                                        damage, said):
    import grpc

    from cinegen.common.client import GeneratorClient, RequestRejected
    from server_kit import private_server, tiny_request

    folder = tmp_path / "models" / "half"
    shutil.copytree(tiny_sd, folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    if damage == "remove":
        weights.unlink()
    else:
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    registry = _registry(folder.parent, tiny_model_cache)
    with private_server(registry) as running, GeneratorClient(running.address, timeout=30) as client:
        with pytest.raises(RequestRejected) as err:
            client.submit(tiny_request(tmp_path / "out", model="half"))
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION.name
    assert f"'half' at {folder} is incomplete: half/{said}" in err.value.message
    assert not registry.is_loaded("half")
