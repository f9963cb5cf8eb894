"""The cinegen panel: connection, pipeline forms from the server's capabilities, Generate, queue, history.

It renders the model (`JobQueue`, `History`) and forwards intents to the `ServerSession` (network,
on worker threads) and the `HostAdapter` (selection in, results out on the host's main thread). It
never imports a host module, and it never clears the artist's form: on any error the values stay.
"""
from __future__ import annotations

import functools
from typing import Any

from cinegen.common.client import new_job_id
from cinegen.common.connection import ConnectionSettings
from cinegen.common.proto import generator_pb2 as pb
from cinegen.common.sequence import FrameRange, SequencePattern, SequencePatternError
from cinegen.common.trajectory_io import to_json

from ..backend.drafting import make_draft, plan_output, release_folder
from ..backend.errors import describe_error
from ..backend.job_runner import JobDraft, JobOutcome
from ..backend.results import results_from_outputs, with_file_colorspace
from ..backend.session import CONNECTED, ServerSession
from ..hosts import HostAdapter, HostSelectionError, detect_host
from ..model.forms import (PLATE_COLORSPACE_FIELD, PLATE_FIELD, TRAJECTORY_FIELD, addon_catalogue, lora_addons,
                           model_catalogue, model_label)
from ..model.form_state import FORM_STATE_FILE, FormState
from ..model.history import History, HistoryEntry
from ..model.jobs import JobQueue, JobRecord
from ..model.outputs import ResultSequence, safe_name
from ..qt import QtCore, QtGui, QtWidgets, exec_dialog
from . import open_panels
from .connection import SettingsDialog
from .form import ParamForm
from .panel_view import PanelView


FORM_SAVE_DELAY_MS = 500  # after the last change: typing is not a write per key, a closed pane loses at most this


class Panel(PanelView):
    def __init__(self, parent: QtWidgets.QWidget | None = None, *, host: HostAdapter | None = None,
                 settings: ConnectionSettings | None = None, history: History | None = None,
                 autoconnect: bool = True):
        super().__init__(history if history is not None else History(), parent)
        self.host = host or detect_host()
        self.settings = settings or ConnectionSettings.load()
        self.jobs = JobQueue()
        self.session = ServerSession(self.settings, self)
        self.drafts: dict[str, JobDraft] = {}
        self.delivered: list[ResultSequence] = []
        self._claimed: dict[str, str] = {}  # job id -> version folder this panel made for it
        self._plate_source = ""
        self._connection_error_shown = False
        self._shut_down = False
        self.form_state = FormState(self.history.path.parent / FORM_STATE_FILE)
        self._other_forms: dict[str, dict[str, Any]] = {}
        self._save_timer = QtCore.QTimer(self)
        self._save_timer.setSingleShot(True)
        self._save_timer.setInterval(FORM_SAVE_DELAY_MS)
        self._save_timer.timeout.connect(self.save_form_state)
        self._wire()
        open_panels.add(self)
        app = QtWidgets.QApplication.instance()
        if app is not None:  # a host (or python -m cinegen.plugin) quitting with jobs still streaming
            app.aboutToQuit.connect(self.shutdown)
        if autoconnect:
            self.session.connect_to_server()

    def _wire(self) -> None:
        s = self.session
        s.status_changed.connect(self._on_status)
        s.capabilities_changed.connect(self._on_capabilities)
        s.job_event.connect(self._on_event)
        s.job_transfer.connect(self._on_transfer)
        s.job_reconnecting.connect(self._on_reconnecting)
        s.job_finished.connect(self._on_finished)
        s.job_error.connect(self._on_job_error)
        s.notice.connect(lambda text: self.banner.show_message(text, "error"))
        self.connection.connect_requested.connect(lambda: self.session.connect_to_server(self.settings))
        self.connection.settings_requested.connect(self.edit_settings)
        self.pipeline_combo.currentIndexChanged.connect(self._on_pipeline_changed)
        # not start itself: the signal's index would become start(msec), the interval (0: a write per key press)
        self.pipeline_combo.currentIndexChanged.connect(lambda _index: self._save_timer.start())
        self.generate_button.clicked.connect(self.generate)
        self.plate_button.clicked.connect(self.plate_from_selection)
        self.trajectory_button.clicked.connect(self.trajectory_from_selection)
        self.queue_view.cancel_requested.connect(self.cancel)
        self.queue_view.move_requested.connect(self.move)
        self.queue_view.clear_requested.connect(self.clear_finished)
        self.history_view.rerun_requested.connect(self.rerun)
        self.history_view.load_requested.connect(self.load_again)

    def can_generate(self) -> bool:
        session = getattr(self, "session", None)  # None while the view is still being built
        return session is not None and session.state == CONNECTED

    # ---- connection -----------------------------------------------------------------------
    def _on_status(self, state: str, message: str) -> None:
        self.connection.show_status(state, message)
        if state == CONNECTED:
            if self._connection_error_shown:
                self.banner.clear()
            self._connection_error_shown = False
        elif state in ("failed", "retrying", "disconnected") and message:
            self.banner.show_message(message, "error")
            self._connection_error_shown = True
        self._update_actions()

    def _on_capabilities(self, caps: pb.Capabilities) -> None:
        """(Re)build one form per pipeline; values the artist typed survive a reconnect."""
        current = self.current_pipeline()
        kept = {name: form.values() for name, form in self.forms.items()}
        if not self.forms:  # the first forms of this panel: what they held when it was last open
            current, kept = self.form_state.load()
        else:  # what the artist typed in a pipeline this server lacks is not dropped with its form
            kept = {**self._other_forms, **kept}
        self._other_forms = kept  # pipelines this server lacks keep their values for the next one that has them
        for form in self.forms.values():
            self.stack.removeWidget(form)
            form.deleteLater()
        self.forms.clear()
        self.pipeline_combo.blockSignals(True)
        self.pipeline_combo.clear()
        for info in caps.pipelines:
            models = [(model_label(m), m.id) for m in caps.models
                      if not info.families or m.family in info.families]
            limits = {"width": caps.max_width, "height": caps.max_height}
            form = ParamForm(info, models, catalogue=model_catalogue(caps), limits=limits, addons=lora_addons(caps),
                             addon_catalogue=addon_catalogue(caps))
            form.setProperty("description", info.description)
            _restore(form, kept.get(info.name, {}))
            form.changed.connect(self._update_actions)
            form.changed.connect(self._save_timer.start)
            self.forms[info.name] = form
            self.stack.addWidget(form)
            self.pipeline_combo.addItem(info.name, info.name)
        self.pipeline_combo.blockSignals(False)
        index = self.pipeline_combo.findData(current) if current else 0
        self.pipeline_combo.setCurrentIndex(max(index, 0))
        self._on_pipeline_changed()

    def edit_settings(self) -> None:
        dialog = SettingsDialog(self.settings, self)
        if exec_dialog(dialog):
            self.settings = dialog.settings()
            self.settings.save()
            self.session.connect_to_server(self.settings)

    # ---- generate ---------------------------------------------------------------------------
    def generate(self) -> str | None:
        """Queue a job from the form; returns its id (None when the form could not be sent)."""
        form = self.current_form()
        if form is None:
            return None
        self.banner.clear()
        form.clear_highlights()
        values = form.values()
        if form.seed_editor is not None:
            values["seed"] = form.seed_editor.seed_for_next_job()
        job_id = new_job_id(form.pipeline)
        try:
            draft = self._draft(form, values, job_id)
        except Exception as exc:  # a bad output path, a pipeline these stubs don't know
            self._release_version(job_id)
            self.banner.show_message(describe_error(exc, self.settings))
            return None
        self.drafts[job_id] = draft
        record = self.jobs.add(JobRecord(job_id, form.pipeline, prompt=str(values.get("prompt") or ""),
                                         seed=values.get("seed"), model=str(values.get("model") or "")))
        self.queue_view.show_record(record)
        self.history.add(HistoryEntry(job_id, form.pipeline, values=values, seed=values.get("seed"),
                                      model=record.model, prompt=record.prompt, server=self.settings.address))
        self.history_view.refresh()
        self.tabs.setCurrentWidget(self.queue_view)
        self.session.submit(draft)
        return job_id

    def _draft(self, form: ParamForm, values: dict[str, Any], job_id: str) -> JobDraft:
        place = plan_output(values, settings=self.settings, output_root=self.host.output_root(),
                            name=f"{safe_name(self.host.shot_name())}_{form.pipeline}",
                            folder_output=form.output_is_folder)
        if place.claimed_folder:
            self._claimed[job_id] = place.claimed_folder
        return make_draft(form.pipeline, form.fields, values, job_id=job_id, settings=self.settings, place=place,
                          client=self.host.client_name(), source=self._plate_source)

    def _release_version(self, job_id: str) -> None:
        release_folder(self._claimed.pop(job_id, ""))  # a refused job leaves no empty version behind

    # ---- job updates -------------------------------------------------------------------------
    def _record(self, job_id: str) -> JobRecord | None:
        return self.jobs.get(job_id)

    def _on_event(self, job_id: str, event: pb.JobEvent) -> None:
        record = self._record(job_id)
        if record is None or not record.apply(event):
            return
        self.queue_view.show_record(record)
        if event.WhichOneof("kind") == "started":
            self.history.update(job_id, seed=record.seed, model=record.model, state="running")
            self.history_view.refresh()

    def _on_transfer(self, job_id: str, state: str, stage: str) -> None:
        record = self._record(job_id)
        if record is not None:
            record.set_transfer(state, stage)
            self.queue_view.show_record(record)

    def _on_reconnecting(self, job_id: str, after_seq: int, delay: float) -> None:
        record = self._record(job_id)
        if record is not None:
            record.reconnects += 1
            record.stage = f"connection lost: resuming after event {after_seq} in {delay:.1f} s"
            self.queue_view.show_record(record)

    def _on_finished(self, job_id: str, outcome: JobOutcome) -> None:
        record = self._record(job_id)
        draft = self.drafts.pop(job_id, None)
        if record is not None:
            record.state, record.message = outcome.state, outcome.message or record.message
            if outcome.state == "completed":
                record.outputs, record.fraction, record.stage = outcome.outputs, 1.0, "done"
            self.queue_view.show_record(record)
        if outcome.state == "completed":
            if record is not None and record.preview_png:
                self.history.save_thumbnail(job_id, record.preview_png)
            results = self._results(record, outcome, draft.source if draft else "")
            for result in results:
                self.host.run_on_main_thread(functools.partial(self._deliver, result))
            self.history.update(job_id, state="completed", outputs=[r.pattern for r in results],
                                frames=", ".join(str(r.frames) for r in results))
        else:
            if outcome.state == "failed":
                self.banner.show_message(f"Job {job_id} failed: {outcome.message}")
            self._release_version(job_id)
            self.history.update(job_id, state=outcome.state, message=outcome.message)
        self.history_view.refresh()

    def _results(self, record: JobRecord | None, outcome: JobOutcome, source: str) -> list[ResultSequence]:
        made = dict(pipeline=record.pipeline, seed=record.seed, model=record.model,
                    prompt=record.prompt) if record else {}
        return results_from_outputs(outcome.outputs, job_id=outcome.job_id, source=source, **made)

    def _deliver(self, result: ResultSequence) -> None:
        try:
            self.host.load_result(result)
        except Exception as exc:  # the frames are safe on disk; say so and how to get them in
            self.banner.show_message(f"The frames are on disk at {result.pattern} ({result.frames}) but could not "
                                     f"be loaded into {self.host.name} ({exc}): load them by hand, or use "
                                     "History → Load result.")
            return
        self.delivered.append(result)
        for notice in self.host.take_notices():  # e.g. the project's colour config lacks the frames' space
            self.banner.show_message(notice, "info")

    def _on_job_error(self, job_id: str, sentence: str) -> None:
        record = self._record(job_id)
        form = self.forms.get(record.pipeline) if record else None
        if form is not None:  # the server names CLI flags (--keep-first-frame); the panel shows labels
            sentence = form.plain_sentence(sentence)
        self.drafts.pop(job_id, None)
        if record is not None:
            record.state, record.message, record.stage = "failed", sentence, "not run"
            self.queue_view.show_record(record)
        self._release_version(job_id)
        self.history.update(job_id, state="refused", message=sentence)
        self.history_view.refresh()
        self.banner.show_message(sentence)
        if form is not None:
            named = form.highlight_fields_named_in(sentence)
            if named and form is self.current_form():  # the marked field in view, not folded away or scrolled off
                editor = form.open_section_of(named[0])
                # after the unfolded section is laid out (posted layout events run before a 0 ms timer)
                QtCore.QTimer.singleShot(0, lambda: self.form_scroll.ensureWidgetVisible(editor))

    def cancel(self, job_id: str) -> None:
        record = self._record(job_id)
        if record is not None and not record.done:
            record.cancel_requested = True
            self.queue_view.show_record(record)
            self.session.cancel(job_id)

    def move(self, job_id: str, delta: int) -> None:
        """Move a queued job `delta` places in the server's queue (-1 = sooner)."""
        record = self._record(job_id)
        if record is not None and record.state == "queued" and record.queue_position > 0:
            self.session.reorder(job_id, max(0, record.queue_position - 1 + delta))

    def clear_finished(self) -> None:
        for job_id in self.jobs.clear_finished():
            self.queue_view.remove(job_id)

    # ---- history ------------------------------------------------------------------------------
    def rerun(self, entry: HistoryEntry) -> None:
        """Put a past job's settings back in the form with its seed locked; the artist edits and generates."""
        if not self.select_pipeline(entry.pipeline):
            self.banner.show_message(f"This server has no '{entry.pipeline}' pipeline: connect to the server that "
                                     "made this job to re-run it.")
            return
        form = self.forms[entry.pipeline]
        form.set_values(entry.rerun_values())
        if form.seed_editor is not None:
            form.seed_editor.set_locked(True)
        self.banner.show_message(f"Settings of job {entry.job_id} are back in the form, seed locked: change what "
                                 "you like and press Generate.", "info")

    def load_again(self, entry: HistoryEntry) -> None:
        for pattern, text in zip(entry.outputs, entry.frames.split(", ")):
            try:
                frames = FrameRange.parse(text)
            except ValueError as exc:
                self.banner.show_message(f"History entry {entry.job_id} has no usable frame range ({exc}).")
                continue
            result = with_file_colorspace(ResultSequence(pattern, frames, entry.pipeline, entry.job_id, entry.seed,
                                                         entry.model, entry.prompt))
            self.host.run_on_main_thread(functools.partial(self._deliver, result))

    # ---- host selection -----------------------------------------------------------------------
    def plate_from_selection(self) -> None:
        form = self.current_form()
        if form is None or not form.has_field(PLATE_FIELD):
            return
        try:
            plate = self.host.selected_plate()
        except HostSelectionError as exc:
            self.banner.show_message(str(exc))
            return
        try:
            sequence = SequencePattern.parse(plate.pattern, any_extension=True, what="plate")
        except SequencePatternError:
            sequence = None  # one file: a still
        field = next(spec for spec in form.fields if spec.name == PLATE_FIELD)
        if field.wants_sequence:
            if sequence is None:
                self.banner.show_message(f"The selection reads one file ({plate.pattern}), not an image sequence: "
                                         f"{form.pipeline} takes a sequence such as DIR/NAME.####.exr.")
                return
            form.set_values({PLATE_FIELD: plate.pattern, "frames": plate.frames.count,
                             "first_frame": plate.frames.first})
            shown = f"Plate {plate.pattern} ({plate.frames}, "
        else:  # one picture (a panorama's input image): the selection's first frame, the job's frames stay
            path = sequence.path_for(plate.frames.first) if sequence is not None else plate.pattern
            form.set_values({PLATE_FIELD: path})
            shown = f"Image {path} ({'frame ' + str(plate.frames.first) + ', ' if sequence is not None else ''}"
        form.set_values({PLATE_COLORSPACE_FIELD: plate.colorspace})  # the server converts from that space
        self._plate_source = plate.source
        self.banner.show_message(f"{shown}{plate.width}×{plate.height}) set as the input.", "info")

    def trajectory_from_selection(self) -> None:
        form = self.current_form()
        if form is None or not form.has_field(TRAJECTORY_FIELD):
            return
        values = form.values()
        try:
            trajectory = self.host.selected_trajectory(values.get("width"), values.get("height"), _job_frames(values))
        except (HostSelectionError, ValueError) as exc:
            self.banner.show_message(str(exc))
            return
        form.set_values({TRAJECTORY_FIELD: to_json(trajectory)})
        tracks = ", ".join(t.name for t in trajectory.tracks)
        self.banner.show_message(f"Trajectory with {len(trajectory.tracks)} track(s) ({tracks}) set.", "info")

    # ---- lifetime -----------------------------------------------------------------------------
    def save_form_state(self) -> None:
        """Keep the pipeline shown and every form's values for the next time the panel opens."""
        self._save_timer.stop()
        if self.forms:  # a panel that never connected has nothing to say over the last one's values
            forms = {**self._other_forms, **{name: form.values() for name, form in self.forms.items()}}
            self.form_state.save(self.current_pipeline(), forms)

    def shutdown(self) -> None:
        """Close the connection and wait for the network threads (idempotent; also on application quit)."""
        if not self._shut_down:
            self._shut_down = True
            open_panels.discard(self)
            self.save_form_state()
            self.session.close()

    def closeEvent(self, event: QtGui.QCloseEvent) -> None:  # noqa: N802 (Qt's name)
        self.shutdown()
        super().closeEvent(event)


def _restore(form: ParamForm, values: dict[str, Any]) -> None:
    """Put values back field by field: one a newer server no longer takes in that type is left at its default."""
    for name, value in values.items():
        try:
            form.set_values({name: value})
        except (TypeError, ValueError, OverflowError):
            pass


def _job_frames(values: dict[str, Any]) -> FrameRange | None:
    """The frames the job generates (first .. first + frames - 1), or None when Frames is left to the model."""
    count, first = values.get("frames"), values.get("first_frame")
    if not count or first is None:
        return None
    return FrameRange(int(first), int(first) + int(count) - 1)
