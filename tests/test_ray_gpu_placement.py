"""The GPU path without a GPU: a local Ray instance that declares 2 GPUs (`ray.init(num_gpus=2)`), so the
runner's `num_gpus=1` workers, Ray's CUDA_VISIBLE_DEVICES per worker and one worker per GPU are
exercised; each worker runs on the CPU when torch there sees no CUDA, and says so."""
from __future__ import annotations

import logging
import re
import uuid

import numpy as np
import pytest

from cinegen.common.client import GeneratorClient, build_request
from cinegen.common.exr import read_exr_frame
from cinegen.common.params import CommonParams, ImageParams

pytestmark = pytest.mark.slow  # a local Ray instance and its workers take ~20 s to start
ray = pytest.importorskip("ray", reason="Ray is an optional extra (pip install 'cinegen[ray]'); its tests skip")

from cinegen.server.scaleout.ray_executor import (RayUnitRunner, UnitWorker, WorkerConfig,  # noqa: E402
                                                      start_local_ray)

GPUS = 2


@pytest.fixture(scope="module")
def config(tiny_model_cache):
    return WorkerConfig(use_hf_cache=False, cache_dir=str(tiny_model_cache), threads=1)


@pytest.fixture(scope="module")
def started(config):
    """The runner as `cinegen serve --ray` starts it, on a cluster whose 2 GPUs exist only as resources."""
    start_local_ray(num_cpus=2, num_gpus=GPUS)  # started again if Ray's 30 s raylet wait runs out
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("cinegen.server.scaleout.ray_executor")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        runner = RayUnitRunner.start("local", config)  # one worker per GPU: no --ray-workers
        yield runner, [r.getMessage() for r in records]
        runner.close()
    finally:
        logger.removeHandler(handler)
        ray.shutdown()


def test_one_worker_per_gpu_each_with_its_own_cuda_visible_devices_running_on_the_cpu(started, config):
    import torch

    runner, messages = started
    assert len(runner.workers) == GPUS
    where = ray.get([w.placement.remote() for w in runner.workers])
    assert sorted(tuple(p["gpus"]) for p in where) == [("0",), ("1",)], "each worker holds one GPU, its own"
    assert [p["cuda_visible_devices"] for p in where] == [p["gpus"][0] for p in where]
    assert len({p["pid"] for p in where}) == GPUS
    assert ray.available_resources().get("GPU", 0) == 0, "both GPUs are held by the workers"
    if not torch.cuda.is_available():  # this machine: the GPUs are declared, torch has no CUDA
        assert [p["device"] for p in where] == ["cpu", "cpu"]
        assert all("runs on the CPU" in p["note"] and f"GPU(s) {p['gpus'][0]}" in p["note"] for p in where)
        assert sum("runs on the CPU" in m for m in messages) == GPUS, "the server's log says it, per worker"
    assert any("worker 1: pid" in m and "CUDA_VISIBLE_DEVICES=" in m for m in messages)
    # a third worker asking for a GPU is not placed while both are held
    extra = ray.remote(UnitWorker).options(num_gpus=1).remote(config)
    try:
        ready, _ = ray.wait([extra.pid.remote()], timeout=3)
        assert not ready, "a worker was placed without a free GPU"
    finally:
        ray.kill(extra, no_restart=True)


def test_more_workers_than_gpus_is_refused_with_what_to_ask_for(started, config):
    with pytest.raises(SystemExit, match=r"--ray-workers 3 is more than the cluster's 2 GPU\(s\).*at most 2"):
        RayUnitRunner.start("local", config, workers=3)


def test_an_image_sequence_runs_on_both_gpu_workers(started, client, registry, tmp_path):
    from cinegen.server.server import start_server
    from cinegen.server.service import GeneratorService, ServerConfig

    runner, _ = started
    common = dict(seed=6, steps=2, width=64, height=64, frames=8, prompt="a lighthouse")
    reference = client.run(build_request("image", CommonParams(out=str(tmp_path / "box" / "i.####.exr"), **common),
                                         ImageParams()))
    assert reference.state == "completed", reference.message
    config = ServerConfig(port=0, use_hf_cache=False)
    server = start_server(config, GeneratorService(config, registry=registry, unit_runner=runner))
    try:
        events: list = []
        with GeneratorClient(server.address, timeout=60) as ray_client:
            result = ray_client.run(build_request("image", CommonParams(out=str(tmp_path / "gpu" / "i.####.exr"),
                                                                        **common), ImageParams(),
                                                  job_id=f"gpu-{uuid.uuid4().hex[:8]}"), on_event=events.append)
    finally:
        server.stop()
    assert result.state == "completed", result.message
    logs = [e.log.message for e in events if e.WhichOneof("kind") == "log"]
    placed = [re.fullmatch(r"ray: frames (\d+)-\d+ on worker (\d) \(GPU (\d)\)", m) for m in logs]
    assert sorted(m.groups() for m in placed if m) == [("1001", "1", runner.labels[id(runner.workers[0])][-2]),
                                                       ("1005", "2", runner.labels[id(runner.workers[1])][-2])]
    assert {m.group(3) for m in placed if m} == {"0", "1"}, "one chunk on each GPU's worker"
    box, gpu = (sorted((tmp_path / name).glob("*.exr")) for name in ("box", "gpu"))
    assert [p.name for p in gpu] == [p.name for p in box] and len(box) == 8
    for a, b in zip(box, gpu):
        # the workers run one torch thread, the in-process server its own count (other sums' order)
        np.testing.assert_allclose(read_exr_frame(b)[0], read_exr_frame(a)[0], atol=2e-3, rtol=2e-3)
