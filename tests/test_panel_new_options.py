"""The session's new options in the Qt panel, against the real server's capabilities plus the models and add-ons a
studio has (an SDXL refiner, LoRAs and a SparseCtrl model with long names), served by a fake so no model loads:
every form fits the 360 px dock the panel is shown in, each picker offers only what its option takes (the refiner
only refiners, SparseCtrl only SparseCtrl add-ons, by id), the empty entry says what empty means, tooltips are
plain sentences (a refusal too: it names labels, not CLI flags, and marks its field), the LoRA list keeps PATH[:WEIGHT] values (Windows drive letters too) and Generate sends them,
with Offload and the Refiner, in the JobRequest."""
from __future__ import annotations

import re
import threading
from concurrent import futures

import grpc
import pytest

pytest.importorskip("PySide6", reason="the panel needs a Qt binding")

from cinegen.common.client import GeneratorClient  # noqa: E402
from cinegen.common.proto import generator_pb2 as pb  # noqa: E402
from cinegen.common.proto import generator_pb2_grpc as pb_grpc  # noqa: E402
from cinegen.plugin.model.forms import request_from_values  # noqa: E402
from cinegen.plugin.qt import QtCore, ensure_application  # noqa: E402
from cinegen.plugin.ui import fields as editors  # noqa: E402
from qt_kit import wait_until  # noqa: E402

DOCK_WIDTH = 360  # the width the panel is shown at in the hosts' tests (a Nuke properties pane, a Blender side bar)
LONG_LORA = "cinematic-anamorphic-flare-style-v2-final"
REFINER = "stable-diffusion-xl-refiner-1.0"
REFUSAL = ("--keep-first-frame keeps the input image as the first frame: give it with --input, or leave "
           "--keep-first-frame off.")


class CapabilitiesServer(pb_grpc.GeneratorServicer):
    """The real server's capabilities with a studio's models and add-ons added; Submit records the request."""

    def __init__(self, caps: pb.Capabilities):
        self.caps, self.requests, self.lock = caps, [], threading.Lock()

    def GetCapabilities(self, request, context):  # noqa: N802
        return self.caps

    def Submit(self, request, context):  # noqa: N802
        with self.lock:
            self.requests.append(request)
        if request.pipeline == "panorama":  # the server's own sentence for a refused panorama
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, REFUSAL)
        return pb.JobTicket(job_id=request.job_id, queue_position=1)

    def Watch(self, request, context):  # noqa: N802
        yield pb.JobEvent(job_id=request.job_id, seq=1, cancelled=pb.Cancelled())


@pytest.fixture(scope="module")
def studio_caps(running_server):
    with GeneratorClient(running_server.address) as client:
        caps = client.capabilities()
    caps.models.add(id="sd_xl_base_1.0", family="sd", source="single-file", kind="sdxl")
    caps.models.add(id=REFINER, family="sd", source="folder", kind="sdxl-refiner")
    caps.addons.add(id=LONG_LORA, kind="lora", family="sd1", path=f"/studio/loras/{LONG_LORA}.safetensors")
    caps.addons.add(id="camera-zoom-in", kind="motion-lora", family="sd1", path="/studio/loras/camera-zoom-in.safetensors")
    caps.addons.add(id="sparsectrl-rgb", kind="sparsectrl", family="sd1", path="/studio/sparsectrl-rgb")
    caps.addons.add(id="vae-ft-mse", kind="vae", family="sd1", path="/studio/vae-ft-mse.safetensors")
    return caps


@pytest.fixture()
def panel(studio_caps, tmp_path, monkeypatch):
    from cinegen.common.connection import ConnectionSettings
    from cinegen.plugin.hosts.standalone import StandaloneHost
    from cinegen.plugin.model.history import History
    from cinegen.plugin.ui.panel import Panel

    app = ensure_application()
    monkeypatch.setenv("CINEGEN_CONFIG_DIR", str(tmp_path / "config"))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    fake = CapabilitiesServer(studio_caps)
    pb_grpc.add_GeneratorServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    panel = Panel(host=StandaloneHost(tmp_path / "renders"), settings=ConnectionSettings(host="127.0.0.1", port=port),
                  history=History(tmp_path / "config" / "history.json"))
    panel.resize(DOCK_WIDTH, 800)
    panel.show()
    panel.fake = fake
    wait_until(lambda: len(panel.forms) == len(studio_caps.pipelines), "the forms")
    yield panel
    panel.shutdown()
    panel.deleteLater()
    app.processEvents()
    server.stop(0)


def _shown(panel, pipeline: str):
    panel.select_pipeline(pipeline)
    for _ in range(5):
        ensure_application().processEvents()
    return panel.forms[pipeline]


@pytest.mark.parametrize("width", ["size hint", DOCK_WIDTH, 480])
def test_every_pipelines_form_fits_the_dock_with_nothing_cut_off_at_the_right(panel, studio_caps, width):
    """At the panel's own size hint (what a new pane or floating window opens at), the hosts' dock width and a
    wide one: every editor ends inside the scroll area's viewport (there is no horizontal scroll bar)."""
    panel.resize(panel.sizeHint().width() if width == "size hint" else width, 800)
    viewport = panel.form_page.parentWidget()
    for info in studio_caps.pipelines:
        form = _shown(panel, info.name)
        assert panel.form_page.minimumSizeHint().width() <= viewport.width(), info.name
        for name, editor in form.editors.items():
            right = editor.mapTo(viewport, QtCore.QPoint(editor.width(), 0)).x()
            assert right <= viewport.width(), f"{info.name}: {name} ends at {right} px of {viewport.width()}"
        lora = form.editors["lora"]
        assert lora.edit.width() >= viewport.width() // 2, "the LoRA list takes its own row, not the picker's leftover"
        steps, guidance = form.editors["steps"], form.editors["guidance"]
        side_by_side = steps.y() == guidance.y()
        assert side_by_side == (width != "size hint"), f"{info.name}: two numbers a row only where they fit"


def test_each_picker_offers_what_its_option_takes_and_says_what_empty_means(panel):
    image, story = _shown(panel, "image"), _shown(panel, "story")
    refiner = image.editors["refiner"].combo
    assert [refiner.itemData(i) for i in range(refiner.count())] == ["", REFINER]  # no base model, no SD 1.5
    assert refiner.itemText(0) == "the base alone" and "sdxl-refiner" in refiner.itemText(1)
    sparsectrl = story.editors["sparsectrl"].combo
    assert isinstance(story.editors["sparsectrl"], editors.EnumEditor)
    assert [sparsectrl.itemData(i) for i in range(sparsectrl.count())] == ["", "sparsectrl-rgb"]  # the id the server looks up
    assert sparsectrl.itemText(0) == "the first one installed"
    picker = image.editors["lora"].picker
    assert [picker.itemData(i) for i in range(1, picker.count())] == [
        f"/studio/loras/{LONG_LORA}.safetensors", "/studio/loras/camera-zoom-in.safetensors"]  # no VAE, no SparseCtrl
    assert picker.view().minimumWidth() >= picker.view().sizeHintForColumn(0), "the open list shows whole names"
    offload = image.editors["offload"]
    assert isinstance(offload, editors.EnumEditor) and offload.value() == "none"
    assert isinstance(_shown(panel, "panorama").editors["keep_first_frame"], editors.BoolEditor)
    assert isinstance(story.editors["keyframe_motion"], editors.EnumEditor)


def test_tooltips_are_plain_sentences(panel, studio_caps):
    for info in studio_caps.pipelines:
        for name, editor in panel.forms[info.name].editors.items():
            tip = editor.toolTip()
            assert not re.search(r"--[a-z]", tip), f"{info.name}.{name} names a CLI flag: {tip}"
            assert not re.search(r'Default: (""|\[\]|true|false|"[^"]*")\.', tip), f"{info.name}.{name}: {tip}"
            assert tip.rstrip().endswith("."), f"{info.name}.{name}: {tip}"


def test_the_lora_list_keeps_path_weight_values_and_generate_sends_them_with_offload_and_the_refiner(panel):
    form = _shown(panel, "image")
    lora = form.editors["lora"]
    typed = ["C:\\loras\\ink.safetensors:0.6", "/studio/loras/plain.safetensors"]
    lora.set_value(typed)
    assert lora.value() == typed
    lora.weight.setValue(0.75)
    lora.picker.activated.emit(2)  # the motion LoRA, at 0.75
    lora.weight.setValue(1.0)
    lora.picker.activated.emit(1)  # the long-named LoRA, at its trained weight: no suffix
    wanted = typed + ["/studio/loras/camera-zoom-in.safetensors:0.75", f"/studio/loras/{LONG_LORA}.safetensors"]
    assert lora.value() == wanted and lora.picker.currentIndex() == 0
    form.editors["offload"].set_value("sequential")
    form.editors["refiner"].set_value(REFINER)
    form.set_values({"prompt": "a lighthouse at dusk", "refiner_split": 0.7})
    job_id = panel.generate()
    wait_until(lambda: panel.fake.requests, "the Submit")
    request = panel.fake.requests[-1]
    assert request.job_id == job_id and request.WhichOneof("params") == "image"
    assert list(request.common.lora) == wanted and request.common.offload == "sequential"
    assert request.image.refiner == REFINER and request.image.refiner_split == pytest.approx(0.7)


def test_story_and_panorama_options_reach_their_messages(panel):
    story = _shown(panel, "story")
    story.set_values({"keyframe_motion": "sparsectrl", "sparsectrl": "sparsectrl-rgb"})
    request = request_from_values("story", story.fields, story.values())
    assert (request.story.keyframe_motion, request.story.sparsectrl) == ("sparsectrl", "sparsectrl-rgb")
    panorama = _shown(panel, "panorama")
    panorama.set_values({"keep_first_frame": True})
    assert request_from_values("panorama", panorama.fields, panorama.values()).panorama.keep_first_frame


def test_a_refusal_names_the_forms_labels_not_cli_flags_and_marks_the_field(panel):
    form = _shown(panel, "panorama")
    form.set_values({"prompt": "a bay at dawn", "keep_first_frame": True})
    panel.generate()
    wait_until(lambda: panel.banner.kind == "error", "the refusal")
    shown = panel.banner.label.text()
    assert shown.startswith("Keep the first frame keeps the input image") and "give it with Input plate" in shown
    assert "--" not in shown
    assert form.labels["keep_first_frame"].property("invalid") and not form.labels["input"].property("invalid")


def test_a_refused_field_is_unfolded_and_scrolled_into_view(panel):
    """The marked field was out of sight when the artist had folded its section or scrolled the form away."""
    from cinegen.plugin.ui.form import Section

    form = _shown(panel, "panorama")
    own = next(s for s in form.findChildren(Section) if s.body.isAncestorOf(form.editors["keep_first_frame"]))
    own.toggle.setChecked(False)  # folded
    panel.form_scroll.verticalScrollBar().setValue(panel.form_scroll.verticalScrollBar().maximum())
    form.set_values({"prompt": "a bay at dawn", "keep_first_frame": True})
    panel.generate()
    wait_until(lambda: panel.banner.kind == "error", "the refusal")
    editor = form.editors["keep_first_frame"]
    wait_until(lambda: editor.isVisible() and not editor.visibleRegion().isEmpty(), "the field to come into view")
    top_left = editor.mapTo(panel.form_scroll.viewport(), editor.rect().topLeft())
    assert 0 <= top_left.y() and top_left.y() + editor.height() <= panel.form_scroll.viewport().height()


def test_each_parameter_type_the_server_publishes_has_its_editor():
    from cinegen.common.params import PIPELINE_PARAMS, CommonParams, describe
    from cinegen.plugin.model.forms import FieldSpec

    ensure_application()
    expected = {"int": editors.IntEditor, "float": editors.FloatEditor, "bool": editors.BoolEditor,
                "string": editors.StringEditor, "text": editors.TextEditor, "enum": editors.EnumEditor,
                "path": editors.PathEditor, "list": editors.ListEditor, "model": editors.EnumEditor,
                "lora": editors.LoraEditor, "addon": editors.EnumEditor}
    published = {d.type for cls in [CommonParams, *PIPELINE_PARAMS.values()] for d in describe(cls, "x")}
    assert published <= set(expected), published - set(expected)
    for kind, editor_class in expected.items():
        default = {"list": [], "lora": [], "int": 1, "float": 1.0, "bool": False}.get(kind, "")
        spec = FieldSpec(name=f"an_{kind}", type=kind, default=default,
                         group="image", choices=("a", "b") if kind == "enum" else ())
        assert type(editors.make_editor(spec)) is editor_class, kind
    newer = FieldSpec(name="from_a_newer_server", type="colour-wheel", default="", group="image")
    assert type(editors.make_editor(newer)) is editors.StringEditor  # a type this plugin does not know: text


def test_a_number_whose_smallest_value_means_automatic_reads_auto_and_is_sent_as_that_value(panel):
    form = _shown(panel, "panorama")
    views = form.editors["view_batch"]  # "0 = automatic, from the memory the device has free"
    assert views.box.text() == "auto" and views.value() == 0
    views.set_value(4)
    assert views.box.text() == "4"
    assert form.editors["steps"].value() is None  # an optional number stays "not sent"
