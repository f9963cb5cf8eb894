"""Plate upscales as chunks of frames on Ray: the split each pipeline declares (video plates cut at clip
starts, each chunk refining every clip its frames are blended from; image plates frame by frame; DiT
plates whole), chunks that give the single-box run's frames bit for bit, and a video plate on 1 and 2
local CPU workers giving identical files."""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import pytest

from cinegen.common.client import GeneratorClient, build_request
from cinegen.common.exr import ExrMetadata, read_exr_frame, write_exr_frame
from cinegen.common.params import CommonParams, UpscaleParams
from cinegen.common.sequence import FrameRange
from cinegen.server.pipelines import load_pipelines
from cinegen.server.pipelines.base import JobSpec, RunContext
from cinegen.server.pipelines.upscale import plate_blend
from cinegen.server.scaleout.ray_executor import plan_units, unit_spec
from cinegen.server.scaleout.units import clip_chunks

VIDEO = "toy-video"  # 8-frame clips, overlapping by 2
PLATE_FRAMES = 20  # clips at 0, 6, 12 (the last flush with the end): two chunks, one clip refined twice
RUN_KEYS = ("capDate",)  # the header fields a second run writes anew


class Recording(RunContext):
    """A run in-process that keeps the written frames (as numpy) and the progress labels."""

    def __init__(self, registry, job: JobSpec):
        self.frames: dict[int, np.ndarray] = {}
        self.labels: set[str] = set()
        super().__init__(job=job, registry=registry, report_progress=lambda stage, *a: self.labels.add(stage),
                         report_preview=lambda *a: None, report_frame=lambda *a: None, report_log=lambda m: None,
                         is_cancelled=lambda: False)

    def frame_sink(self, pattern, resolved, **kwargs):
        run = self

        class Sink:
            written: list[str] = []

            def write(self, index, image, alpha=None):
                run.frames[resolved.first_frame + index] = image.detach().float().cpu().numpy().copy()

        return Sink()


def write_plate(folder: Path, frames: int, side: int = 32) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:side, 0:side].astype(np.float32)
    for k in range(frames):  # a moving gradient: neighbouring clips disagree where they overlap
        rgb = np.stack([(x + 2 * k) % side / side, y / side, np.full_like(x, k / frames)], -1)
        write_exr_frame(folder / f"plate.{1001 + k}.exr", rgb, metadata=ExrMetadata())
    return str(folder / "plate.####.exr")


def plate_spec(plate: str, model: str = VIDEO, **common) -> JobSpec:
    c = dict(model=model, seed=3, steps=4, prompt="a harbour at dawn", out="unused.####.exr")
    c.update(common)
    return JobSpec("plate", "upscale", CommonParams(**c), UpscaleParams(input=plate, scale=2.0))


# ---- the split --------------------------------------------------------------------------------------
@pytest.mark.parametrize("count, window", [(20, 8), (40, 16), (30, 8), (100, 16), (17, 16)])
def test_clip_chunks_cut_at_clip_starts_and_cost_one_clip_per_boundary(count, window):
    blend = plate_blend(count, window)
    starts = blend.starts
    for parts in (2, 3, 4):
        units = clip_chunks(FrameRange.from_count(1001, count), starts, window, parts)
        if len(units) == 1:  # two clips: a chunk would refine both anyway, so no split
            assert len(starts) <= 2 and units[0].name == "all"
            continue
        ranges = [FrameRange.parse(u.frame_range) for u in units]
        assert ranges[0].first == 1001 and ranges[-1].last == 1000 + count
        assert all(a.last + 1 == b.first for a, b in zip(ranges, ranges[1:])), "the chunks tile the plate"
        assert all(r.first - 1001 in starts for r in ranges), "every boundary is at a clip start"
        refined = [u.weight / window for u in units]
        # each boundary costs the clip(s) crossing it, and the busiest chunk does less than the whole plate
        crossing = sum(1 for r in ranges[1:] for s in starts if s < r.first - 1001 < s + window)
        assert sum(refined) == len(starts) + crossing
        assert max(refined) < len(starts) and len(units) <= parts


def test_each_pipeline_declares_its_split(registry, tmp_path):
    pipelines = load_pipelines()
    plate = write_plate(tmp_path / "in", PLATE_FRAMES, side=8)

    def names(spec, workers):
        return [u.name for u in plan_units(pipelines[spec.pipeline], spec, registry, workers=workers)]

    assert names(plate_spec(plate), 1) == ["all"], "one worker: no clip refined twice"
    assert names(plate_spec(plate), 2) == ["frames 1001-1012", "frames 1013-1020"]
    assert names(plate_spec(plate), 4) == ["frames 1001-1012", "frames 1013-1020"], "3 clips: 2 chunks at most"
    assert names(plate_spec(plate, first_frame=1), 2) == ["frames 1-12", "frames 13-20"], "the output's numbers"
    assert names(plate_spec(plate, model="tiny-sd"), 2)[:2] == ["frames 1001-1004", "frames 1005-1008"]
    # a DiT plate is blended in time every step and its VAE is causal: no chunk could give the same frames
    assert names(plate_spec(plate, model="tiny-wan"), 2) == ["all"]


def test_video_plate_chunks_give_the_single_box_frames_bit_for_bit(registry, tmp_path):
    pipeline = load_pipelines()["upscale"]
    spec = plate_spec(write_plate(tmp_path / "in", PLATE_FRAMES))

    def run(job: JobSpec) -> Recording:
        ctx = Recording(registry, job)
        pipeline.run(ctx)
        return ctx

    full = run(spec)
    frames: dict[int, np.ndarray] = {}
    refined = []
    for unit in plan_units(pipeline, spec, registry, workers=2):
        ctx = run(unit_spec(spec, unit))
        assert not frames.keys() & ctx.frames.keys(), "a frame written by two chunks"
        frames.update(ctx.frames)
        refined.append(sorted({label.split(" stage")[0] for label in ctx.labels if "clip" in label}))
    assert refined == [["plate clip 1/3", "plate clip 2/3"], ["plate clip 2/3", "plate clip 3/3"]]
    assert frames.keys() == full.frames.keys() == set(range(1001, 1021))
    for number, image in full.frames.items():
        # the same clips, denoised alike and blended in the same order: the same numbers
        assert np.array_equal(frames[number], image), number
    # the last clip run alone (a plate of its 8 frames) gives the frames only it covers, not those it fades
    # into clip 2's: a chunk must refine the clip before its first frame too
    (tmp_path / "tail").mkdir()
    for number in range(1013, 1021):
        os.link(tmp_path / "in" / f"plate.{number}.exr", tmp_path / "tail" / f"plate.{number}.exr")
    alone = run(plate_spec(str(tmp_path / "tail" / "plate.####.exr")))
    assert all(np.array_equal(alone.frames[n], full.frames[n]) for n in range(1015, 1021))
    assert not np.array_equal(alone.frames[1013], full.frames[1013])


# ---- on a local Ray instance ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def workers(tiny_model_cache):
    ray = pytest.importorskip("ray", reason="Ray is an optional extra (pip install 'cinegen[ray]'); its tests skip")
    from cinegen.server.scaleout.ray_executor import WorkerConfig, create_workers, start_local_ray

    start_local_ray(num_cpus=2)  # started again if Ray's 30 s raylet wait runs out
    try:
        config = WorkerConfig(use_hf_cache=False, cache_dir=str(tiny_model_cache), threads=1)  # same kernels
        yield create_workers(config, 2, {"num_cpus": 1})
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def servers(workers, registry):
    from cinegen.server.scaleout.ray_executor import RayUnitRunner
    from cinegen.server.server import start_server
    from cinegen.server.service import GeneratorService, ServerConfig

    running = {}
    for count in (1, 2):
        config = ServerConfig(port=0, use_hf_cache=False)
        running[count] = start_server(config, GeneratorService(config, registry=registry,
                                                               unit_runner=RayUnitRunner(workers[:count])))
    yield running
    for server in running.values():
        server.stop()


@pytest.mark.slow
def test_a_video_plate_on_one_and_two_workers_gives_identical_files(servers, tmp_path):
    plate = write_plate(tmp_path / "in", PLATE_FRAMES)
    results, logs = {}, {}
    job_id = f"plate-{uuid.uuid4().hex[:8]}"  # the same job (id, options, destination) on each server
    for count, server in servers.items():
        events: list = []
        request = build_request("upscale", CommonParams(model=VIDEO, seed=3, steps=4, prompt="a harbour at dawn",
                                                        out=str(tmp_path / "out" / "up.####.exr")),
                                UpscaleParams(input=plate, scale=2.0), job_id=job_id)
        with GeneratorClient(server.address, timeout=60) as client:
            result = client.run(request, on_event=events.append)
        assert result.state == "completed", result.message
        (tmp_path / "out").rename(tmp_path / f"w{count}")
        results[count] = sorted((tmp_path / f"w{count}").glob("up.*.exr"))
        logs[count] = [e.log.message for e in events if e.WhichOneof("kind") == "log"]
    assert not any(m.startswith("ray:") for m in logs[1]), "one worker: the plate is one unit"
    assert any("2 units on 2 worker(s)" in m for m in logs[2])
    assert "ray: frames 1001-1012 on worker 1" in logs[2] and "ray: frames 1013-1020 on worker 2" in logs[2]
    assert [p.name for p in results[1]] == [p.name for p in results[2]] == [f"up.{n}.exr" for n in range(1001, 1021)]
    for one, two in zip(results[1], results[2]):
        (a, head_a), (b, head_b) = read_exr_frame(one), read_exr_frame(two)
        assert a.shape == (64, 64, 4) and np.array_equal(a, b), one.name  # every channel, bit for bit
        assert {k: v for k, v in head_a.items() if k not in RUN_KEYS} == \
               {k: v for k, v in head_b.items() if k not in RUN_KEYS}, one.name
