"""The Qt panel, offscreen, against a real in-process server on the tiny model.

The event loop is driven by hand (`wait_until` processes Qt events until a condition holds), so no
pytest-qt is needed. Network work runs on the panel's worker threads; every check is made on what
the panel shows or hands to the host.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time

import pytest

pytest.importorskip("PySide6", reason="the panel needs a Qt binding")

from cinegen.common.client import GeneratorClient  # noqa: E402
from cinegen.common.connection import BackoffPolicy, ConnectionSettings  # noqa: E402
from cinegen.common.proto import generator_pb2 as pb  # noqa: E402
from cinegen.plugin.hosts.standalone import StandaloneHost  # noqa: E402
from cinegen.plugin.model.forms import FieldSpec  # noqa: E402
from cinegen.plugin.model.history import History, HistoryEntry  # noqa: E402
from cinegen.plugin.qt import QtCore, ensure_application  # noqa: E402
from cinegen.plugin.ui import fields as editors  # noqa: E402
from cinegen.plugin.ui.form import ParamForm  # noqa: E402
from cinegen.plugin.ui.panel import Panel  # noqa: E402

TINY = {"model": "tiny-sd", "width": 64, "height": 64, "steps": 3, "frames": 1}
FAST_BACKOFF = BackoffPolicy(initial=0.1, factor=2.0, maximum=0.5, jitter=0.0, give_up_after=30.0)


@pytest.fixture(scope="module")
def app():
    return ensure_application()


def wait_until(predicate, timeout: float = 60.0, what: str = "condition") -> None:
    app = ensure_application()
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        app.processEvents(QtCore.QEventLoop.AllEvents, 50)
        time.sleep(0.005)


def settings_for(address: str, **changes) -> ConnectionSettings:
    host, port = address.rsplit(":", 1)
    return ConnectionSettings(**{"host": host, "port": int(port), "connect_timeout": 2.0, "backoff": FAST_BACKOFF,
                                 **changes})


@pytest.fixture()
def make_panel(app, tmp_path, monkeypatch):
    monkeypatch.setenv("CINEGEN_CONFIG_DIR", str(tmp_path / "config"))
    panels = []

    def make(address: str, **changes) -> Panel:
        panel = Panel(host=StandaloneHost(tmp_path / "renders"), settings=settings_for(address, **changes),
                      history=History(tmp_path / "config" / "history.json"))
        panel.resize(420, 760)
        panel.show()
        panels.append(panel)
        return panel

    yield make
    for panel in panels:
        panel.shutdown()
        panel.deleteLater()
    app_ = ensure_application()
    app_.processEvents()


def connected(panel: Panel) -> Panel:
    wait_until(lambda: panel.session.state == "connected", 30, "the panel to connect")
    return panel


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- forms from capabilities ---------------------------------------------------------------------
EDITOR_FOR_TYPE = {"int": editors.IntEditor, "float": editors.FloatEditor, "bool": editors.BoolEditor,
                   "text": editors.TextEditor, "enum": editors.EnumEditor, "path": editors.PathEditor,
                   "list": editors.ListEditor, "string": editors.StringEditor, "model": editors.EnumEditor,
                   "lora": editors.LoraEditor, "addon": editors.EnumEditor}


def test_connecting_builds_one_form_per_pipeline_with_an_editor_per_parameter(make_panel, running_server):
    panel = connected(make_panel(running_server.address))
    with GeneratorClient(running_server.address) as client:
        caps = client.capabilities()
    assert [panel.pipeline_combo.itemData(i) for i in range(panel.pipeline_combo.count())] == \
        [p.name for p in caps.pipelines]
    for info in caps.pipelines:
        form = panel.forms[info.name]
        assert set(form.editors) == {p.name for p in info.params} and len(form.editors) == len(info.params)
        for spec in info.params:
            editor = form.editors[spec.name]
            expected = {"seed": editors.SeedEditor, "model": editors.EnumEditor}.get(spec.name,
                                                                                     EDITOR_FOR_TYPE[spec.type])
            assert isinstance(editor, expected), spec.name
            assert spec.help in editor.toolTip() and spec.help in form.labels[spec.name].toolTip()
            assert form.labels[spec.name].text() == spec.label
            default = json.loads(spec.default_json)
            if spec.name != "model":
                assert editor.value() == default or (default is None and editor.value() in (None, "")), spec.name
    model_editor = panel.forms["image"].editors["model"]
    offered = [model_editor.combo.itemData(i) for i in range(model_editor.combo.count())]
    assert offered == [""] + [m.id for m in caps.models if m.family == "sd"]
    assert panel.generate_button.isEnabled()
    assert panel.connection.text.toolTip().startswith(f"Connected to {running_server.address}")
    assert panel.connection.text.text().startswith(running_server.address)


def test_a_pipeline_the_panel_never_saw_gets_a_working_form_from_its_description(app):
    info = pb.PipelineInfo(name="mystery", description="made up", params=[
        pb.ParamSpec(name="prompt", type="text", default_json='""', group="common", label="Prompt", help="words"),
        pb.ParamSpec(name="strength", type="float", default_json="0.25", minimum=0.0, maximum=1.0, step=0.05,
                     group="mystery", label="Strength", help="how much"),
        pb.ParamSpec(name="tiles", type="int", default_json="null", minimum=1, maximum=64, group="mystery",
                     label="Tiles", help="auto when empty"),
        pb.ParamSpec(name="mode", type="enum", default_json='"b"', choices=["a", "b", "c"], group="mystery",
                     label="Mode", help="pick"),
        pb.ParamSpec(name="loop", type="bool", default_json="true", group="mystery", label="Loop", help="loops"),
        pb.ParamSpec(name="shots", type="list", default_json="[]", group="mystery", label="Shots", help="ids"),
        pb.ParamSpec(name="plate", type="path", default_json='""', group="mystery", label="Plate", help="file")])
    form = ParamForm(info)
    assert form.values() == {"prompt": "", "strength": 0.25, "tiles": None, "mode": "b", "loop": True,
                             "shots": [], "plate": ""}
    strength = form.editors["strength"].box
    assert (strength.minimum(), strength.maximum(), strength.singleStep()) == (0.0, 1.0, 0.05)
    tiles = form.editors["tiles"].box
    assert tiles.specialValueText() == "auto" and tiles.maximum() == 64
    assert "Range: 0 to 1." in form.editors["strength"].toolTip()
    form.set_values({"strength": 0.5, "tiles": 8, "mode": "c", "loop": False, "shots": ["sh010", "sh020"],
                     "unknown_field": 1})
    assert form.values()["tiles"] == 8 and form.values()["mode"] == "c"
    assert form.values()["shots"] == ["sh010", "sh020"] and form.values()["loop"] is False


# ---- a job from Generate to the host ---------------------------------------------------------------
def test_generate_shows_progress_to_100_percent_a_preview_and_hands_the_result_to_the_host(
        make_panel, running_server, tmp_path):
    panel = connected(make_panel(running_server.address))
    form = panel.current_form()
    form.set_values({**TINY, "frames": 2, "prompt": "a lighthouse at dusk"})
    job_id = panel.generate()
    record = panel.jobs.get(job_id)
    wait_until(lambda: record.done and panel.delivered, 120, "the job to finish and load")
    assert record.state == "completed" and record.fraction == 1.0
    assert record.seqs == list(range(1, record.last_seq + 1)) and record.duplicates == 0
    row = panel.queue_view.rows[job_id]
    assert row.progress.value() == row.progress.maximum() and row.progress.text() == "100%"
    assert row.thumbnail_pixmap() is not None  # the live preview PNG was shown
    (result,) = panel.host.loaded
    assert result.frames.first == 1001 and result.frames.last == 1002
    assert result.colorspace == "ACEScg" and result.seed == record.seed and result.model == "tiny-sd"
    assert result.pattern == str(tmp_path / "renders" / "cinegen_image" / "v001" / "cinegen_image_v001.####.exr")
    assert all(os.path.exists(result.parsed.path_for(f)) for f in result.frames)
    saved = History(tmp_path / "config" / "history.json").get(job_id)  # persisted, read back from disk
    assert (saved.state, saved.seed, saved.model, saved.prompt) == ("completed", record.seed, "tiny-sd",
                                                                    "a lighthouse at dusk")
    assert saved.outputs == [result.pattern] and saved.frames == "1001-1002"


def test_cancel_stops_a_running_job_and_the_row_says_so(make_panel, running_server):
    panel = connected(make_panel(running_server.address))
    panel.current_form().set_values({**TINY, "steps": 200, "prompt": "long"})
    job_id = panel.generate()
    record = panel.jobs.get(job_id)
    wait_until(lambda: record.state == "running" and record.fraction > 0, 120, "the job to run")
    panel.cancel(job_id)
    wait_until(lambda: record.done, 60, "the job to stop")
    assert record.state == "cancelled" and record.fraction < 0.5
    assert not panel.queue_view.rows[job_id].cancel.isVisibleTo(panel)
    assert panel.host.loaded == [] and panel.history.get(job_id).state == "cancelled"


class DroppingProxy:
    """A TCP forwarder whose open connections can be cut, as a flaky network would."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self.lock:
                self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def drop_all(self) -> None:
        with self.lock:
            for s in self.sockets:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            self.sockets.clear()

    def close(self) -> None:
        self.listener.close()
        self.drop_all()


def test_a_dropped_connection_resumes_after_the_last_event_without_losing_or_repeating_any(
        make_panel, running_server):
    proxy = DroppingProxy(running_server.port)
    try:
        panel = connected(make_panel(f"127.0.0.1:{proxy.port}"))
        resumed_after: list[int] = []
        panel.session.job_reconnecting.connect(lambda job, after_seq, delay: resumed_after.append(after_seq))
        panel.current_form().set_values({**TINY, "steps": 16, "prompt": "resume me"})
        job_id = panel.generate()
        record = panel.jobs.get(job_id)
        wait_until(lambda: record.fraction > 0 and record.last_seq >= 4, 120, "progress events")
        seen_at_drop = record.last_seq
        proxy.drop_all()
        wait_until(lambda: record.done, 120, "the job to finish after the drop")
    finally:
        proxy.close()
    assert record.state == "completed" and record.reconnects >= 1
    assert seen_at_drop < record.last_seq  # the drop came mid-job, with events still to come
    assert resumed_after and resumed_after[0] >= seen_at_drop  # asked only for what came after
    assert record.seqs == list(range(1, record.last_seq + 1))  # no gap
    assert record.duplicates == 0 and record.gaps == []
    server_events = running_server.service.jobs.get(job_id).events
    assert record.last_seq == len(server_events)


def test_results_of_a_server_without_shared_disk_are_downloaded_into_the_local_version_folder(
        make_panel, running_server, tmp_path):
    remote, local = tmp_path / "server-disk", tmp_path / "downloads"
    panel = connected(make_panel(running_server.address, shared_disk=False, download_dir=str(local),
                                 remote_output_dir=str(remote)))
    panel.current_form().set_values({**TINY, "frames": 2, "prompt": "remote"})
    job_id = panel.generate()
    wait_until(lambda: panel.jobs.get(job_id).done and panel.delivered, 120, "download and load")
    (result,) = panel.delivered
    assert result.pattern.startswith(str(local / "cinegen_image" / "v001"))
    server_files = sorted((remote / job_id).glob("*.exr"))
    assert len(server_files) == 2
    for frame, server_file in zip(result.frames, server_files):
        assert open(result.parsed.path_for(frame), "rb").read() == server_file.read_bytes()


# ---- errors: a sentence, the form kept ---------------------------------------------------------
def test_a_refused_request_shows_the_servers_sentence_and_keeps_every_form_value(
        make_panel, running_server, tmp_path):
    panel = connected(make_panel(running_server.address))
    form = panel.current_form()
    form.set_values({**TINY, "width": 100, "prompt": "keep me", "negative_prompt": "blur", "seed": 1234})
    form.seed_editor.set_locked(True)
    before = form.values()
    job_id = panel.generate()
    wait_until(lambda: panel.jobs.get(job_id).done, 30, "the refusal")
    assert "Width 100 is not a positive multiple of 8; try 96." in panel.banner.text
    assert panel.banner.isVisible() and panel.banner.kind == "error"
    assert form.values() == before
    assert form.labels["width"].property("invalid") is True
    assert not (tmp_path / "renders" / "cinegen_image" / "v001").exists()  # no empty version left behind
    assert panel.history.get(job_id).state == "refused"


def test_server_down_says_where_and_how_to_start_it_and_keeps_the_form(make_panel, running_server):
    panel = connected(make_panel(running_server.address))
    panel.current_form().set_values({"prompt": "still here", "steps": 7})
    dead = f"127.0.0.1:{free_port()}"
    panel.session.connect_to_server(settings_for(dead, connect_timeout=0.3))
    wait_until(lambda: panel.session.state == "retrying", 30, "the failure")
    assert f"Can't reach the cinegen server at {dead}" in panel.banner.text
    assert "cinegen serve" in panel.banner.text and "Retrying in" in panel.banner.text
    assert not panel.generate_button.isEnabled()
    values = panel.current_form().values()
    assert values["prompt"] == "still here" and values["steps"] == 7


@pytest.fixture(scope="module")
def token_server(registry):
    from cinegen.server.server import start_server
    from cinegen.server.service import GeneratorService, ServerConfig

    config = ServerConfig(port=0, use_hf_cache=False, token="s3cret")
    running = start_server(config, GeneratorService(config, registry=registry))
    yield running
    running.stop()


def test_wrong_or_missing_token_says_to_fix_the_token_and_is_not_retried(make_panel, token_server):
    wrong = make_panel(token_server.address, token="guess")
    wait_until(lambda: wrong.session.state == "failed", 30, "the refusal")
    assert "refused the access token" in wrong.banner.text and "connection settings" in wrong.banner.text
    missing = make_panel(token_server.address)
    wait_until(lambda: missing.session.state == "failed", 30, "the refusal")
    assert "needs an access token" in missing.banner.text
    right = connected(make_panel(token_server.address, token="s3cret"))
    assert "image" in right.forms and not right.banner.text


@pytest.mark.parametrize("version, advice", [(2, "update the cinegen plugin"), (0, "update the server")])
def test_a_server_of_another_protocol_version_is_named_with_what_to_update(
        make_panel, running_server, monkeypatch, version, advice):
    import cinegen.server.service as service

    monkeypatch.setattr(service, "PROTOCOL_VERSION", version)
    panel = make_panel(running_server.address)
    wait_until(lambda: panel.session.state == "failed", 30, "the version check")
    assert f"protocol version {version}" in panel.banner.text and advice in panel.banner.text
    assert not panel.generate_button.isEnabled()


# ---- history --------------------------------------------------------------------------------------
def test_rerun_with_changes_puts_the_settings_back_with_the_seed_locked(make_panel, running_server):
    panel = connected(make_panel(running_server.address))
    values = {**TINY, "prompt": "a red fox", "negative_prompt": "", "seed": 99, "guidance": 6.5}
    entry = panel.history.add(HistoryEntry("image-old", "image", values=values, seed=4242, model="tiny-sd",
                                           prompt="a red fox", state="completed"))
    panel.history_view.refresh()
    panel.history_view.select("image-old")
    panel.history_view.rerun.click()
    form = panel.current_form()
    shown = form.values()
    assert panel.current_pipeline() == "image"
    assert shown["prompt"] == "a red fox" and shown["guidance"] == 6.5 and shown["steps"] == 3
    assert shown["seed"] == 4242 and form.seed_editor.locked  # the seed that was used, kept
    assert form.seed_editor.seed_for_next_job() == 4242
    assert panel.banner.kind == "info" and entry.job_id in panel.banner.text


def test_unlocked_seed_is_new_for_every_job_and_shown_in_the_form(app):
    spec = FieldSpec(name="seed", type="int", default=None, minimum=0, maximum=2**63 - 1)
    seed = editors.SeedEditor(spec)
    first, second = seed.seed_for_next_job(), seed.seed_for_next_job()
    assert first != second and seed.value() == second
    seed.set_locked(True)
    assert seed.seed_for_next_job() == second == seed.seed_for_next_job()


def test_the_settings_dialog_edits_a_copy_of_the_connection_settings(app):
    from cinegen.plugin.ui.connection import SettingsDialog

    original = ConnectionSettings(host="gpu01", port=6000, token="t", backoff=FAST_BACKOFF)
    dialog = SettingsDialog(original)
    dialog.host.setText(" gpu02.studio ")
    dialog.port.setValue(7000)
    dialog.token.setText("")
    dialog.tls.setChecked(True)
    dialog.shared_disk.setChecked(False)
    dialog.download_dir.setText("/renders/here")
    dialog.client_cert.setText("/certs/artist.pem ")
    dialog.client_key.setText("/certs/artist.key")
    edited = dialog.settings()
    assert (edited.host, edited.port, edited.token, edited.tls, edited.shared_disk, edited.download_dir) == \
        ("gpu02.studio", 7000, "", True, False, "/renders/here")
    assert (edited.client_cert, edited.client_key) == ("/certs/artist.pem", "/certs/artist.key")  # mutual TLS
    assert edited.backoff == FAST_BACKOFF and original.host == "gpu01"  # the original is untouched


def test_the_trajectory_is_taken_over_the_frames_the_job_generates():
    from cinegen.common.sequence import FrameRange
    from cinegen.plugin.ui.panel import _job_frames

    assert _job_frames({"frames": 8, "first_frame": 1001}) == FrameRange(1001, 1008)
    assert _job_frames({"frames": None, "first_frame": 1001}) is None  # the host's own range then
