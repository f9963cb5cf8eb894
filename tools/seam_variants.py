"""Ring seam per stage for plain / early overlap / GMG / both on a toy model (issue 18, helper E).

Usage: OMP_NUM_THREADS=1 .venv/bin/python tools/seam_variants.py toy-image 0,1,2,3,4,5,6,7  (one JSON line a seed)

Per seed and variant: the seam ratio of the low-resolution GMG pass (decoded as a ring), of its
upsampled latent before the full-size run, and of the final panorama; 'rows' = share of pixel rows
whose |col[W-1] - col[0]| exceeds 3x that row's median neighbour difference (a cut spans all rows,
an object's edge only the object's rows); 'max_interior' = the largest interior column-pair ratio
(object edges inside the picture). 'both-rel' = both, with the overlap schedule measured from the
full-size run's first step instead of the absolute step (a diagnostic, not a default)."""
import json, sys
import numpy as np
import torch
import cinegen.server.diffusion.panorama_denoise as pdn
from cinegen.server.diffusion.windows import overlap_for_step as absolute_overlap
from cinegen.server.models.registry import ModelRegistry
from cinegen.server.pipelines import panorama as pano
from cinegen.server.quality.metrics import seam_report
from cinegen.server.quality.runs import RunSettings, eval_prompts, resolved, to_hwc

torch.set_num_threads(1)
model = sys.argv[1]
seeds = [int(s) for s in sys.argv[2].split(",")]
reg = ModelRegistry(device="cpu", use_hf_cache=False)
adapter = reg.get(model)
native = adapter.native_size
scale = max(2, min(4, 256 // native[0]))
s = RunSettings(scale=scale)
size = (native[0] * scale, native[1])
prompts = eval_prompts(8)
START = {"value": 0}

def relative_overlap(index, steps):
    return absolute_overlap(index - START["value"], steps - START["value"])

def stats(latent):
    img = to_hwc(next(iter(pano.decode_panorama_frames(adapter, latent, wrap=True))))
    rep = seam_report(img)
    a = img.astype(np.float64)
    inner = np.abs(a[:, 1:] - a[:, :-1]).mean(axis=2)  # (H, W-1)
    seam_rows = np.abs(a[:, -1] - a[:, 0]).mean(axis=1)
    rows = float((seam_rows > 3 * np.median(inner, axis=1)).mean())
    cols = inner.mean(axis=0)
    return {"ratio": round(rep.ratio, 2), "rows": round(rows, 2), "max_interior": round(float(cols.max() / np.median(cols)), 1)}

for seed in seeds:
    r = resolved(adapter, prompts[seed][0], seed, s, width=size[0], height=size[1])
    row = {"seed": seed, "prompt": prompts[seed][0]}
    for name, overlap, rel in (("plain", False, False), ("overlap", True, False), ("gmg", False, False),
                               ("both", True, False), ("both-rel", True, True)):
        st = pano.PanoramaSettings(projection="ring", early_overlap=overlap,
                                   scale_down=None if name in ("plain", "overlap") else 2.0)
        generator = pano.seeded_generator(r.seed)
        layout = pano.LatentLayout(video=False)
        cond = adapter.encode_prompt(r.prompt, r.negative_prompt, r.guidance)
        plan = pano.panorama_plan(adapter, r, st)
        noise = pano._initial_noise(adapter, layout, r.frames, r.width, r.height, generator)

        def run(plan, x, start):
            sch = adapter.new_scheduler(); sch.set_timesteps(r.steps, device=adapter.device)
            levels = pano.NoiseLevels.for_scheduler(sch)
            x = x * getattr(sch, "init_noise_sigma", 1.0) if start == 0 else levels.noised(x, noise, start)
            START["value"] = start if rel else 0
            pdn.overlap_for_step = relative_overlap
            try:
                return pdn.denoise_panorama(x, sch, lambda z, t: adapter.predict(z, t, cond), layout, plan, generator,
                                            start_index=start, step_kwargs=pano.scheduler_step_kwargs(sch, generator))
            finally:
                pdn.overlap_for_step = absolute_overlap
        low_plan = pano.global_motion_plan(adapter, r, st)
        if low_plan is None:
            row[name] = {"final": stats(run(plan, noise, 0))}
            continue
        low_noise = pano._initial_noise(adapter, layout, r.frames, low_plan.latent_size[2] * 8, low_plan.latent_size[1] * 8, generator)
        START["value"] = 0
        low = run(low_plan, low_noise, 0)
        up = pdn.upsample_latent(low, plan.latent_size[1:], wrap_width=True)
        start = min(r.steps - 1, int(r.steps * pano.GMG_START_FRACTION))
        final = run(plan, up, start)
        row[name] = {"low": stats(low), "upsampled": stats(up), "final": stats(final),
                     "low_latent": list(low_plan.latent_size), "start": start}
    print(json.dumps(row), flush=True)
