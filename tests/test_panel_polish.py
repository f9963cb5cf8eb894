"""Panel details against a fake server (fast, deterministic): rows that fit the list once it scrolls,
history thumbnails, a model picker per model-typed option, the server's size limit on the form, queue
reordering end to end (panel -> Reorder RPC -> the server's queue), and host notices in the banner."""
from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
import pytest

pytest.importorskip("PySide6", reason="the panel needs a Qt binding")

from cinegen.common.proto import generator_pb2 as pb  # noqa: E402
from cinegen.common.proto import generator_pb2_grpc as pb_grpc  # noqa: E402
from cinegen.plugin.qt import QtCore, QtGui, QtWidgets, ensure_application  # noqa: E402
from qt_kit import wait_until  # noqa: E402

PNG = None  # a real preview PNG, made once Qt is up


def _png() -> bytes:
    image = QtGui.QImage(32, 32, QtGui.QImage.Format_RGB32)
    image.fill(QtGui.QColor(200, 120, 40))
    buffer = QtCore.QBuffer()
    buffer.open(QtCore.QIODevice.WriteOnly)
    image.save(buffer, "PNG")
    return bytes(buffer.data())


class FakeServer(pb_grpc.GeneratorServicer):
    """Jobs whose prompt starts with "wait" stay queued (position = order of arrival); others complete with a
    preview. Reorder moves a waiting job and re-announces every waiting job's position."""

    def __init__(self, out_dir):
        self.out_dir, self.lock = out_dir, threading.Lock()
        self.waiting: list[str] = []
        self.streams: dict[str, list[pb.JobEvent]] = {}
        self.reorders: list[tuple[str, int]] = []

    def GetCapabilities(self, request, context):  # noqa: N802
        common = [pb.ParamSpec(name=n, type=t, default_json=d, group="common", label=n.capitalize(), minimum=8,
                               maximum=16384) for n, t, d in (("width", "int", "null"), ("height", "int", "null"))]
        common += [pb.ParamSpec(name="prompt", type="text", default_json='""', group="common", label="Prompt"),
                   pb.ParamSpec(name="model", type="model", default_json='""', group="common", label="Model"),
                   pb.ParamSpec(name="out", type="path", default_json='""', group="common", label="Output")]
        story = pb.PipelineInfo(name="story", families=["sd"], params=common + [
            pb.ParamSpec(name="video_model", type="model", default_json='""', group="story", label="Video model",
                         families=["animatediff", "wan"])])
        models = [pb.ModelInfo(id="tiny-sd", family="sd"), pb.ModelInfo(id="tiny-animatediff", family="animatediff"),
                  pb.ModelInfo(id="wan-1.3b", family="wan"), pb.ModelInfo(id="tiny-cogvideox", family="cogvideox")]
        return pb.Capabilities(server_version="9", protocol_version=1, max_width=2048, max_height=1024,
                               pipelines=[story], models=models)

    def Submit(self, request, context):  # noqa: N802
        with self.lock:
            if request.common.prompt.startswith("wait"):
                self.waiting.append(request.job_id)
                self.streams[request.job_id] = [pb.JobEvent(job_id=request.job_id, seq=1,
                                                            queued=pb.Queued(position=len(self.waiting)))]
            else:
                frame = f"{self.out_dir}/{request.job_id}.1001.exr"
                self.streams[request.job_id] = [
                    pb.JobEvent(job_id=request.job_id, seq=1, started=pb.Started(model="tiny-sd", seed=3)),
                    pb.JobEvent(job_id=request.job_id, seq=2, preview=pb.Preview(frame=1001, png=PNG)),
                    pb.JobEvent(job_id=request.job_id, seq=3, completed=pb.Completed(outputs=[frame]))]
        return pb.JobTicket(job_id=request.job_id, queue_position=1)

    def Reorder(self, request, context):  # noqa: N802
        with self.lock:
            self.reorders.append((request.job_id, request.position))
            self.waiting.remove(request.job_id)
            self.waiting.insert(request.position, request.job_id)
            for index, job_id in enumerate(self.waiting):
                events = self.streams[job_id]
                events.append(pb.JobEvent(job_id=job_id, seq=len(events) + 1, queued=pb.Queued(position=index + 1)))
            return pb.ReorderReply(position=request.position, queued=self.waiting)

    def Watch(self, request, context):  # noqa: N802
        sent = 0
        while context.is_active():
            with self.lock:
                events = list(self.streams.get(request.job_id, []))
            for event in events[sent:]:
                yield event
                if event.WhichOneof("kind") == "completed":
                    return
            sent = len(events)
            time.sleep(0.01)


@pytest.fixture()
def panel(tmp_path, monkeypatch):
    global PNG
    from cinegen.common.connection import ConnectionSettings
    from cinegen.plugin.hosts.standalone import StandaloneHost
    from cinegen.plugin.model.history import History
    from cinegen.plugin.ui.panel import Panel

    app = ensure_application()
    PNG = PNG or _png()
    monkeypatch.setenv("CINEGEN_CONFIG_DIR", str(tmp_path / "config"))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    fake = FakeServer(tmp_path)
    pb_grpc.add_GeneratorServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    host = StandaloneHost(tmp_path / "renders")
    panel = Panel(host=host, settings=ConnectionSettings(host="127.0.0.1", port=port),
                  history=History(tmp_path / "config" / "history.json"))
    panel.resize(360, 700)
    panel.show()
    panel.fake = fake
    wait_until(lambda: "story" in panel.forms, "the form")
    yield panel
    panel.shutdown()
    panel.deleteLater()
    app.processEvents()
    server.stop(0)


def test_model_typed_options_pick_from_their_families_and_the_form_takes_the_servers_size_limit(panel):
    form = panel.forms["story"]
    combo = form.editors["video_model"].combo
    offered = [combo.itemData(i) for i in range(combo.count())]
    assert offered == ["", "tiny-animatediff", "wan-1.3b"]  # not the image model, not cogvideox
    assert form.editors["width"].box.maximum() == 2048 and form.editors["height"].box.maximum() == 1024


def test_queued_jobs_move_up_through_the_reorder_rpc(panel):
    form = panel.forms["story"]
    ids = []
    for n in range(3):  # one after the other: each submit runs on its own thread
        form.set_values({"prompt": f"wait {n}"})
        ids.append(panel.generate())
        wait_until(lambda: panel.jobs.get(ids[-1]).queue_position == n + 1, f"job {n} queued")
    row = panel.queue_view.rows[ids[2]]
    assert row.up.isVisibleTo(panel) and row.down.isVisibleTo(panel)
    assert not panel.queue_view.rows[ids[0]].up.isEnabled()  # already next
    row.up.click()
    wait_until(lambda: [panel.jobs.get(j).queue_position for j in ids] == [1, 3, 2],
               "the move to come back as queued events of both jobs it swapped")
    assert panel.fake.reorders == [(ids[2], 1)]


def test_rows_fit_the_list_once_it_scrolls_and_history_keeps_thumbnails(panel):
    form = panel.forms["story"]
    for n in range(8):
        form.set_values({"prompt": f"wait, a very long prompt about a lighthouse on a cliff at dusk number {n}"})
        panel.generate()
    form.set_values({"prompt": "done now"})
    finished = panel.generate()
    wait_until(lambda: panel.jobs.get(finished).done, "the finished job")
    queue = panel.queue_view
    panel.tabs.setCurrentWidget(queue)
    wait_until(lambda: queue.scroll.verticalScrollBar().isVisible(), "the queue to scroll")
    viewport = queue.scroll.viewport().width()
    for row in queue.rows.values():
        assert row.width() <= viewport, "a row wider than the list is cut off at the right"
        bar = row.progress
        assert bar.width() >= bar.fontMetrics().horizontalAdvance("100%") + 4
    prompt = queue.rows[finished].prompt
    assert prompt.full_text() == "done now" and prompt.text() == "done now"
    entry = panel.history.get(finished)
    assert entry.thumbnail and QtGui.QPixmap(entry.thumbnail).width() == 32
    panel.tabs.setCurrentWidget(panel.history_view)
    item = next(panel.history_view.tree.topLevelItem(i) for i in range(panel.history_view.tree.topLevelItemCount())
                if panel.history_view.tree.topLevelItem(i).data(0, QtCore.Qt.UserRole) == finished)
    assert not item.icon(0).isNull() and item.text(1) == "done now"


def test_host_notices_after_loading_a_result_reach_the_banner(panel):
    panel.host.take_notices = lambda: ["The project's config has no ACEScg: tagged scene_linear."]
    form = panel.forms["story"]
    form.set_values({"prompt": "done"})
    job = panel.generate()
    wait_until(lambda: panel.jobs.get(job).done and panel.delivered, "the delivered result")
    assert "no ACEScg" in panel.banner.text
