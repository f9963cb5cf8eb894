"""Generate without a panel, blocking: for `nuke -t`, `blender -b` and farm scripts.

    from cinegen.plugin.batch import generate_blocking
    from cinegen.plugin.hosts.nuke_host import NukeHost
    reads = generate_blocking(NukeHost(), "image", {"prompt": "a lighthouse", "frames": 24})

The same path as the panel's Generate: the saved connection settings, a versioned output folder,
uploads and downloads when the disk is not shared, resume after a dropped connection, and the
result handed to the host (a Read node, an Image node and strip, ...).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from cinegen.common.client import GeneratorClient, new_job_id
from cinegen.common.connection import ConnectionSettings, check_protocol

from .backend.drafting import make_draft, plan_output, release_folder
from .backend.job_runner import JobCallbacks, run_job
from .backend.results import results_from_outputs
from .hosts.base import HostAdapter
from .model.forms import pipeline_fields
from .model.outputs import safe_name


class GenerationFailed(RuntimeError):
    """The job ran but did not complete; the message says why."""


def generate_blocking(host: HostAdapter, pipeline: str, values: Mapping[str, Any], *,
                      settings: ConnectionSettings | None = None,
                      on_progress: Callable[[float, str], None] = lambda fraction, stage: None) -> list[Any]:
    """Run one job to its end and load its results into `host`; returns what the host made of them."""
    settings = settings or ConnectionSettings.load()
    with GeneratorClient.from_settings(settings) as client:
        capabilities = client.capabilities()
        check_protocol(capabilities.protocol_version, capabilities.server_version, settings.address)
        info = next((p for p in capabilities.pipelines if p.name == pipeline), None)
        if info is None:
            raise ValueError(f"The server at {settings.address} has no '{pipeline}' pipeline; it offers "
                             f"{', '.join(p.name for p in capabilities.pipelines)}.")
        job_id = new_job_id(pipeline)
        place = plan_output(values, settings=settings, output_root=host.output_root(),
                            name=f"{safe_name(host.shot_name())}_{pipeline}", folder_output=info.output_is_folder)
        draft = make_draft(pipeline, pipeline_fields(info), values, job_id=job_id, settings=settings, place=place,
                           client=host.client_name().replace("panel", "batch"))

        progress = host.batch_progress(f"cinegen {pipeline}")  # nuke.ProgressTask in Nuke
        cancel_sent = False
        seed = values.get("seed")
        made = {"seed": int(seed) if seed is not None else None, "model": str(values.get("model") or "")}

        def report(event) -> None:
            nonlocal cancel_sent
            if event.HasField("started"):  # the seed and model the server chose when the values left them open
                made.update(seed=event.started.seed, model=event.started.model or made["model"])
            if event.HasField("progress"):
                on_progress(event.progress.fraction, event.progress.stage)
                progress.update(event.progress.fraction, event.progress.stage)
            if not cancel_sent and progress.cancelled():  # the server stops between denoising steps
                cancel_sent = True
                client.cancel(job_id)

        try:
            outcome = run_job(client, draft, shared_disk=settings.shared_disk, callbacks=JobCallbacks(on_event=report))
        except Exception:
            release_folder(place.claimed_folder)
            raise
        finally:
            progress.close()
    if outcome.state != "completed":
        release_folder(place.claimed_folder)
        raise GenerationFailed(f"Job {job_id} {outcome.state}: {outcome.message or 'no reason given'}")
    results = results_from_outputs(outcome.outputs, job_id=job_id, pipeline=pipeline, model=made["model"],
                                   seed=made["seed"], prompt=str(values.get("prompt") or ""))
    return [host.load_result(result) for result in results]
