"""Render the panel offscreen mid-job against an in-process tiny-model server and save a screenshot.

    QT_QPA_PLATFORM=offscreen python plugin/tools/panel_screenshot.py docs/pictures/panel.png

One finished job, one running (progress bar and live preview) and one queued, as an artist sees it.
A development tool: it starts a server, so it needs the server's dependencies (torch).
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(out: str = "docs/pictures/panel.png") -> None:
    from cinegen.common.connection import ConnectionSettings
    from cinegen.plugin.hosts.standalone import StandaloneHost
    from cinegen.plugin.model.history import History
    from cinegen.plugin.qt import QtCore, QtWidgets, ensure_application
    from cinegen.plugin.ui.panel import Panel
    from cinegen.plugin.ui.style import dark_palette
    from cinegen.server.server import start_server
    from cinegen.server.service import ServerConfig

    work = Path(tempfile.mkdtemp(prefix="cinegen-shot-"))
    os.environ.setdefault("CINEGEN_CONFIG_DIR", str(work / "config"))
    app = ensure_application()
    app.setStyle(QtWidgets.QStyleFactory.create("Fusion"))
    app.setPalette(dark_palette())
    server = start_server(ServerConfig(port=0, use_hf_cache=False))
    host, port = server.address.rsplit(":", 1)
    panel = Panel(host=StandaloneHost(work / "renders"), settings=ConnectionSettings(host=host, port=int(port)),
                  history=History(work / "config" / "history.json"))
    panel.resize(440, 820)
    panel.show()

    def wait(condition, timeout=300.0):
        deadline = time.monotonic() + timeout
        while not condition() and time.monotonic() < deadline:
            app.processEvents(QtCore.QEventLoop.AllEvents, 50)
            time.sleep(0.01)

    wait(lambda: panel.current_form() is not None)
    form = panel.current_form()
    form.set_values({"model": "tiny-sd", "width": 128, "height": 128, "steps": 4, "frames": 1,
                     "prompt": "a lighthouse on a cliff at dusk, volumetric fog", "negative_prompt": "text, watermark"})
    done = panel.generate()
    wait(lambda: panel.jobs.get(done).done)
    form.set_values({"steps": 6, "frames": 8, "prompt": "storm clouds rolling over a harbour at night, wide shot"})
    running = panel.generate()
    form.set_values({"frames": 4, "prompt": "the harbour at dawn, calm water"})
    panel.generate()
    form.set_values({"prompt": "storm clouds rolling over a harbour at night, wide shot", "frames": 8})
    record = panel.jobs.get(running)
    wait(lambda: record.preview_png and 0.93 < record.fraction < 1.0)
    for _ in range(5):
        app.processEvents()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    panel.grab().save(out)
    print(f"saved {out} ({record.fraction:.0%} of job {running})")
    for job in panel.jobs.active():
        panel.cancel(job.job_id)
    wait(lambda: not panel.jobs.active(), 60)  # let the worker threads end before the interpreter does
    panel.shutdown()
    server.stop()


if __name__ == "__main__":
    main(*sys.argv[1:])
