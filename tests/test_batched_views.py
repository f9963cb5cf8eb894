"""Batched sphere views and OSD windows (#21): few denoiser calls, same result, no host syncs per step."""
from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from torch.utils._python_dispatch import TorchDispatchMode

from cinegen.server.diffusion.osd import BlendSchedule, disjoint_groups
from cinegen.server.diffusion.panorama_denoise import (
    LatentLayout, NoiseLevels, PanoramaPlan, denoise_panorama, projecting_denoise_step, sphere_view_regions,
    view_overlap, view_reads)
from cinegen.server.diffusion.windows import Boundary
from cinegen.server.pipelines import panorama as panorama_module
from cinegen.server.pipelines.base import Resolved
from cinegen.server.pipelines.panorama import PanoramaSettings, generate_panorama

CPU = torch.device("cpu")


def _sphere_plan(height=16, frames=1, window=(1, 8, 8), **kw) -> PanoramaPlan:
    return PanoramaPlan((frames, height, 2 * height), window, boundary_w=Boundary.RING, projecting_steps=1, **kw)


def _levels() -> NoiseLevels:
    scheduler = DDIMScheduler()
    scheduler.set_timesteps(4)
    return NoiseLevels.for_scheduler(scheduler)


def view_model(x: torch.Tensor, k: int) -> torch.Tensor:  # each view its own (nonlinear) step
    return 0.8 * x + 0.1 * torch.tanh(x) + 0.01 * k


# ---- which views go together -------------------------------------------------------------------------------------
@pytest.mark.parametrize("height", [8, 16])
def test_views_that_share_a_call_neither_read_nor_write_what_the_other_writes(height):
    views = sphere_view_regions(_sphere_plan(height=height), step=2, offset_t=0, device=CPU)
    writes = [set(v.sphere_index.tolist()) for v in views]
    reads = [set((v.rows * 2 * height + v.cols).flatten().tolist()) for v in views]
    assert any(r - w for r, w in zip(reads, writes))  # nearest sampling reads pixels a view does not write
    overlap, read_matrix = view_overlap(views), view_reads(views)
    for j, k in itertools.product(range(44), repeat=2):
        assert read_matrix[j, k] == bool(writes[j] & reads[k])
        assert overlap[j, k] == bool(writes[j] & writes[k] or writes[j] & reads[k] or reads[j] & writes[k])
    groups = disjoint_groups(overlap)
    assert sorted(k for g in groups for k in g) == list(range(44))
    assert all(not overlap[a, b] for g in groups for a, b in itertools.combinations(g, 2))
    # In band order every view overlaps the one before it; 120° views pair up (2-3 to a group).
    assert all(overlap[k - 1, k] for k in range(1, 44))
    assert len(groups) == {8: 25, 16: 20}[height]


def test_views_over_frames_overlap_only_where_their_frame_spans_meet():
    plan = _sphere_plan(frames=6, window=(3, 8, 8))  # two temporal windows, frames 0-2 and 3-5
    views = sphere_view_regions(plan, step=0, offset_t=0, device=CPU)
    overlap = view_overlap(views)
    assert len(views) == 88 and not overlap[:44, 44:].any() and overlap[:44, :44].any()


# ---- same result, fewer calls ------------------------------------------------------------------------------------
def _reference_plan_order_step(latent, regions, denoise, levels, step_index, blend, generator):
    """The projecting step as it was before batching: one view at a time, `done.any()` read per view."""
    advanced = torch.zeros(latent.shape[-3:], dtype=torch.bool)
    ratio, out = blend.ratio(step_index), latent.clone()
    for k, region in enumerate(regions):
        x, done = region.read(out), region.read(advanced)
        if bool(done.any()):
            noise = torch.randn(x.shape, generator=generator, dtype=x.dtype)
            x_new = denoise(torch.where(done, levels.push_back(x, noise, step_index), x), k)
            if ratio > 0.0:
                x_new = torch.where(done, (1.0 - ratio) * x_new + ratio * x, x_new)
        else:
            x_new = denoise(x, k)
        region.write(out, x_new)
        region.write(advanced, torch.ones_like(done))
    return out


@pytest.mark.parametrize("height", [8, 16])  # at 8 rows views read pixels they do not write
def test_plan_order_one_view_a_call_is_the_step_as_it_was(height):
    views = sphere_view_regions(_sphere_plan(height=height), step=1, offset_t=0, device=CPU)
    latent = torch.randn(1, 4, 1, height, 2 * height, generator=torch.Generator().manual_seed(0))
    args = (views, view_model, _levels(), 1, BlendSchedule())
    ours = projecting_denoise_step(latent, *args, torch.Generator().manual_seed(3), order="plan")
    assert torch.equal(ours, _reference_plan_order_step(latent, *args, torch.Generator().manual_seed(3)))


@pytest.mark.parametrize("view_batch", [1, 2, None])
@pytest.mark.parametrize("height", [8, 16])
def test_batched_views_equal_one_view_a_call_in_the_same_order(view_batch, height):
    views = sphere_view_regions(_sphere_plan(height=height), step=4, offset_t=0, device=CPU)
    latent = torch.randn(2, 4, 1, height, 2 * height, generator=torch.Generator().manual_seed(1))
    overlap, calls = view_overlap(views), []

    def batch_model(parts, indices):
        calls.append(list(indices))
        assert not any(overlap[a, b] for a, b in itertools.combinations(indices, 2))
        return [view_model(x, k) for x, k in zip(parts, indices)]

    args = (_levels(), 1, BlendSchedule())
    one = projecting_denoise_step(latent, views, view_model, *args, torch.Generator().manual_seed(5), order="disjoint")
    batched = projecting_denoise_step(latent, views, None, *args, torch.Generator().manual_seed(5),
                                      denoise_views=batch_model, view_batch=view_batch, order="disjoint")
    assert torch.equal(batched, one)  # the same elementwise ops per view: bit-equal
    assert sorted(k for c in calls for k in c) == list(range(44))
    # groups: 16 rows: 14 of 2 views, 5 of 3, 1 of 1; 8 rows: 19 of 2, 6 of 1
    assert len(calls) == {(1, 16): 44, (2, 16): 25, (None, 16): 20, (1, 8): 44, (2, 8): 25, (None, 8): 25}[
        view_batch, height]


def test_every_sphere_latent_is_advanced_once_in_disjoint_order():
    class CountingLevels:  # a "noise level" that is the number of advances
        def push_back(self, x, noise, index):
            return x - 1.0

    views = sphere_view_regions(_sphere_plan(height=32), step=7, offset_t=0, device=CPU)
    out = projecting_denoise_step(torch.zeros(1, 1, 1, 32, 64), views, None, CountingLevels(), 7,
                                  BlendSchedule(r_max=0.0), None, order="disjoint", view_batch=3,
                                  denoise_views=lambda parts, ks: [x + 1.0 for x in parts])
    assert torch.equal(out, torch.ones_like(out))


def _resolved(steps=2) -> Resolved:
    return Resolved("a beach", "", "tiny-sd", 7, steps, 7.5, 128, 64, 1, 24.0, 1001)


def test_the_tiny_model_sphere_gives_the_same_frames_batched_or_one_view_a_call(registry, monkeypatch):
    adapter = registry.get("tiny-sd")
    calls: list[int] = []
    predict = adapter.predict

    def counting(x, t, cond):
        calls.append(x.shape[0])
        return predict(x, t, cond)

    monkeypatch.setattr(adapter, "predict", counting)
    settings = PanoramaSettings(projection="sphere", scale_down=None, early_overlap=False)
    batched = generate_panorama(adapter, _resolved(), settings)  # CPU budget: 64 tiny views a call
    batched_calls = list(calls)
    monkeypatch.setitem(panorama_module.CELLS_PER_CALL, "cpu", 8 * 8)  # one view (and one window) a call
    calls.clear()
    single = generate_panorama(adapter, _resolved(), settings)
    # Batching changes only the sums inside the UNet's batched kernels: float32 rounding (2.3e-5 seen).
    torch.testing.assert_close(batched, single, rtol=0, atol=1e-4)
    # step 0: 44 sphere views (25 groups on an 8×16 sphere); step 1: the ring's 2 windows (one wave)
    assert len(calls) == 44 + 2 and len(batched_calls) == 25 + 1
    assert max(calls) == 1 and max(batched_calls[:25]) == 2


def test_disjoint_window_order_batches_overlapping_windows_and_still_advances_once(registry):
    adapter = registry.get("tiny-sd")
    r = Resolved("a beach", "", "tiny-sd", 7, 2, 7.5, 512, 128, 1, 24.0, 1001)
    settings = PanoramaSettings(projection="ring", scale_down=None)  # early overlap on: 0.75, then 0.25
    plan = panorama_module.panorama_plan(adapter, r, settings)
    latent = torch.randn(1, 4, 1, 16, 64, generator=torch.Generator().manual_seed(0))
    calls = {}
    for order in ("plan", "disjoint"):
        count, tallies = [0], []

        def predict(x, t, count=count):
            count[0] += 1
            return 0.1 * x

        scheduler = adapter.new_scheduler()
        scheduler.set_timesteps(2)
        denoise_panorama(latent, scheduler, predict, LatentLayout(False), dataclasses.replace(plan, window_order=order),
                         None, record_counts=lambda step, c: tallies.append(c))
        assert all(torch.equal(c.net_advances, torch.ones_like(c.net_advances)) for c in tallies)
        calls[order] = count[0]
    # Step 0 (overlap 0.75): 160 windows in one chain in plan order, 16 groups of disjoint ones (4 × 4
    # parity classes); step 1 (0.25): 44 in a chain, 8 groups (the ring's 11 columns need 3 classes).
    assert calls == {"plan": 160 + 44, "disjoint": 16 + 8}, calls


# ---- no host syncs in the loop -----------------------------------------------------------------------------------
class HostReads(TorchDispatchMode):
    """Counts reads of tensor values by the host: `.item()`, `bool(t)`, `int(t)`, `float(t)` (all go through
    `_local_scalar_dense`), and `.cpu()`, `.tolist()`, `.numpy()` (patched: on a CPU tensor they do not dispatch)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        self._patched = {name: getattr(torch.Tensor, name) for name in ("cpu", "tolist", "numpy")}
        for name, original in self._patched.items():
            setattr(torch.Tensor, name, self._counting(original))
        return super().__enter__()

    def __exit__(self, *exc):
        for name, original in self._patched.items():
            setattr(torch.Tensor, name, original)
        return super().__exit__(*exc)

    def _counting(self, original):
        def wrapper(tensor, *args, **kwargs):
            self.count += 1
            return original(tensor, *args, **kwargs)
        return wrapper


class NoSyncDDIM(DDIMScheduler):
    """DDIM's timesteps and levels, with a step that reads nothing back (stock DDIM compares a tensor
    timestep on the host once per call: the scheduler's sync, not the loop's)."""

    def step(self, model_output, timestep, sample, **kwargs):
        return (sample - 0.1 * model_output,)


def test_the_counter_sees_host_reads():
    with HostReads() as reads:
        x = torch.ones(3)
        bool(x.any()), x.sum().item(), x.cpu(), x.tolist()
    assert reads.count == 4


def _loop_plan(projection: str) -> PanoramaPlan:
    return PanoramaPlan((1, 16, 32 if projection == "sphere" else 48), (1, 8, 8),
                        boundary_w=Boundary.DOCK if projection == "plane" else Boundary.RING,
                        projecting_steps=2 if projection == "sphere" else 0, explicit_overlap=True, max_batch=3)


def _run_loop(plan: PanoramaPlan, device: str, generator, hooks=()) -> torch.Tensor:
    scheduler = NoSyncDDIM()
    scheduler.set_timesteps(4)
    latent = torch.randn(1, 4, 1, *plan.latent_size[1:], generator=torch.Generator().manual_seed(0)).to(device)
    return denoise_panorama(latent, scheduler, lambda x, t: torch.tanh(x), LatentLayout(False), plan, generator,
                            hooks=hooks)


@pytest.mark.parametrize("projection", ["plane", "ring"])
def test_the_window_loop_reads_nothing_back_during_a_step(projection):
    reads, per_step = HostReads(), {}

    class Bracket:
        def before_step(self, index, t, x):
            per_step[index] = reads.count
            return x

        def after_step(self, index, t, x):
            per_step[index] = reads.count - per_step[index]
            return x

    with reads:  # overlap 0.75 → 0: up to 16 windows a step, push-back noise from a CPU generator
        _run_loop(_loop_plan(projection), "cpu", torch.Generator().manual_seed(1), hooks=(Bracket(),))
    assert per_step == {0: 0, 1: 0, 2: 0, 3: 0}, per_step


@pytest.mark.parametrize("projection", ["plane", "ring", "sphere"])
def test_the_panorama_loop_runs_on_a_device_whose_values_cannot_be_read(projection):
    # Meta tensors have shapes and no values: any host read of the latent, a mask or a noise (`.item()`,
    # `bool(t)`, `.cpu()`) raises. The sphere's view geometry is built on the host before it goes there.
    out = _run_loop(_loop_plan(projection), "meta", None)
    assert out.device.type == "meta" and out.shape == (1, 4, 1, *_loop_plan(projection).latent_size[1:])


def test_the_batch_budget_follows_the_free_memory_of_a_gpu(monkeypatch):
    free = {"bytes": 48 << 30}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free["bytes"], 80 << 30))
    cuda = torch.device("cuda")
    assert panorama_module.cells_per_call(cuda) == 2 * panorama_module.CELLS_PER_CALL["cuda"]  # 48 GiB: 32 SD windows
    free["bytes"] = 1 << 30  # a nearly full GPU still gets one SD 1.5 window a call
    assert panorama_module.cells_per_call(cuda) == 64 * 64
    assert panorama_module.cells_per_call(CPU) == panorama_module.CELLS_PER_CALL["cpu"]


# ---- the orders and the view batch as a user sets them ----------------------------------------------------------
def test_window_order_view_order_and_view_batch_flags_reach_the_panorama_settings():
    from cinegen.common.client import build_request
    from cinegen.common.params import CommonParams, PanoramaParams, from_proto
    from cinegen.server.cli import build_parser

    def settings(*flags: str) -> PanoramaSettings:
        values = vars(build_parser().parse_args(["generate", "panorama", "--projection", "sphere", *flags]))
        params = PanoramaParams(**{f.name: values[f.name] for f in dataclasses.fields(PanoramaParams)
                                   if values.get(f.name) is not None})  # as cmd_generate builds them
        request = build_request("panorama", CommonParams(prompt="a"), params)
        return PanoramaSettings.from_params(from_proto(request.panorama, PanoramaParams))

    default = settings()
    assert (default.window_order, default.view_order, default.view_batch) == ("plan", "disjoint", 0)
    chosen = settings("--window-order", "disjoint", "--view-order", "plan", "--view-batch", "3")
    assert (chosen.window_order, chosen.view_order, chosen.view_batch) == ("disjoint", "plan", 3)
    # an old client sends empty strings: the defaults
    assert PanoramaSettings.from_params(from_proto(build_request("panorama", CommonParams()).panorama,
                                                   PanoramaParams)) == PanoramaSettings()


def test_a_disjoint_window_order_makes_fewer_denoiser_calls_per_step_than_plan_on_a_tiny_ring(registry, monkeypatch):
    from cinegen.common.params import PanoramaParams

    adapter = registry.get("tiny-sd")
    calls: list[int] = []
    predict = adapter.predict
    monkeypatch.setattr(adapter, "predict", lambda x, t, cond: calls.append(x.shape[0]) or predict(x, t, cond))
    counts = {}
    for order in ("plan", "disjoint"):
        calls.clear()
        settings = PanoramaSettings.from_params(PanoramaParams(projection="ring", guidance_scale_down=1.0,
                                                               window_order=order))
        assert settings.window_order == order
        generate_panorama(adapter, Resolved("a beach", "", "tiny-sd", 7, 2, 7.5, 256, 64, 1, 24.0, 1001), settings)
        counts[order] = len(calls)
    # early overlap (0.75, then 0.25) chains overlapping windows one a call in plan order; disjoint batches them
    assert counts["disjoint"] < counts["plan"], counts


def test_view_batch_bounds_the_sphere_views_per_call_and_an_unknown_order_is_refused(registry, monkeypatch):
    from cinegen.common.params import PanoramaParams
    from cinegen.server.errors import InvalidArgument

    adapter = registry.get("tiny-sd")
    r = _resolved()
    plan = panorama_module.panorama_plan(adapter, r, PanoramaSettings(projection="sphere", view_batch=1))
    automatic = panorama_module.panorama_plan(adapter, r, PanoramaSettings(projection="sphere"))
    assert plan.view_batch == 1 and automatic.view_batch > 1  # 0 = from cells_per_call (64 tiny views on a CPU)
    with pytest.raises(InvalidArgument, match="plan, disjoint"):
        PanoramaSettings.from_params(PanoramaParams(window_order="raster"))
