"""Shared fixtures: offline, a session cache for the tiny models, one in-process server."""
from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def tiny_model_cache(tmp_path_factory):
    """Tiny models are built once per test session into a private cache (never the user's)."""
    cache = tmp_path_factory.mktemp("cinegen-cache")
    old = os.environ.get("CINEGEN_CACHE")
    os.environ["CINEGEN_CACHE"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("CINEGEN_CACHE", None)
    else:
        os.environ["CINEGEN_CACHE"] = old


@pytest.fixture(scope="session")
def registry(tiny_model_cache):
    from cinegen.server.models.registry import ModelRegistry

    return ModelRegistry(use_hf_cache=False, cache_dir=tiny_model_cache)


@pytest.fixture(scope="session")
def running_server(tiny_model_cache, registry):
    from cinegen.server.server import start_server
    from cinegen.server.service import GeneratorService, ServerConfig

    config = ServerConfig(port=0, use_hf_cache=False, max_width=1024, max_height=1024)
    running = start_server(config, GeneratorService(config, registry=registry))
    yield running
    running.stop()


@pytest.fixture()
def client(running_server):
    from cinegen.common.client import GeneratorClient

    with GeneratorClient(running_server.address, timeout=30) as c:
        yield c
