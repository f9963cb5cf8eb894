"""A pipeline's form, built only from its `PipelineInfo` (the server's parameter descriptions).

Layout rules are by type and group, never by pipeline: multi-line text fields of the common group
(the prompts) first, then the seed and model, then the pipeline's own options, then the remaining
common settings in a collapsible section; numbers and switches sit two to a row.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Sequence

from cinegen.common.params import plain_help
from cinegen.common.proto import generator_pb2 as pb

from ..model.forms import MODEL_FIELD, SEED_FIELD, FieldSpec, pipeline_fields
from ..qt import QtCore, QtWidgets, Signal
from .fields import FieldEditor, SeedEditor, make_editor

_COMPACT_TYPES = ("int", "float", "bool", "enum")


class Section(QtWidgets.QWidget):
    """A titled block that folds away."""

    def __init__(self, title: str, expanded: bool = True, parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.toggle = QtWidgets.QToolButton()
        self.toggle.setObjectName("sectionHeader")
        self.toggle.setText(title)
        self.toggle.setCheckable(True)
        self.toggle.setChecked(expanded)
        self.toggle.setToolButtonStyle(QtCore.Qt.ToolButtonTextBesideIcon)
        self.toggle.setSizePolicy(QtWidgets.QSizePolicy.Expanding, QtWidgets.QSizePolicy.Fixed)
        self.body = QtWidgets.QWidget()
        self.grid = QtWidgets.QGridLayout(self.body)
        self.grid.setContentsMargins(2, 2, 2, 4)
        self.grid.setHorizontalSpacing(6)
        self.grid.setVerticalSpacing(3)
        self.grid.setColumnStretch(1, 1)
        self.grid.setColumnStretch(3, 1)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(self.toggle)
        layout.addWidget(self.body)
        self.toggle.toggled.connect(self._show)
        self._show(expanded)
        self._row, self._column = 0, 0
        self._entries: list[tuple[QtWidgets.QLabel, QtWidgets.QWidget, bool]] = []
        self.columns = 2  # compact fields per row; 1 in a dock too narrow for two

    def _show(self, expanded: bool) -> None:
        self.toggle.setArrowType(QtCore.Qt.DownArrow if expanded else QtCore.Qt.RightArrow)
        self.body.setVisible(expanded)

    def add(self, label: QtWidgets.QLabel, editor: QtWidgets.QWidget, compact: bool) -> None:
        self._entries.append((label, editor, compact))
        self._place(label, editor, compact and self.columns == 2)

    def two_column_width(self) -> int:
        """The narrowest this section can be with two compact fields a row (the grid's columns as packed)."""
        columns, spans, column = [0, 0, 0, 0], [0], 0
        for label, editor, compact in self._entries:
            if not compact or column >= 4:
                column = 0
            label_width, editor_width = label.minimumSizeHint().width(), _min_width(editor)
            if compact:
                columns[column] = max(columns[column], label_width)
                columns[column + 1] = max(columns[column + 1], editor_width)
                column += 2
            else:
                columns[0], column = max(columns[0], label_width), 0
                spans.append(editor_width)
        spacing = self.grid.horizontalSpacing()
        margins = self.grid.contentsMargins()
        return max(sum(columns) + 3 * spacing, columns[0] + spacing + max(spans)) + margins.left() + margins.right()

    def set_columns(self, columns: int) -> None:
        """Lay the compact fields out two a row or one a row (the order stays)."""
        if columns == self.columns:
            return
        self.columns = columns
        for label, editor, _ in self._entries:
            self.grid.removeWidget(label)
            self.grid.removeWidget(editor)
        self._row, self._column = 0, 0
        for label, editor, compact in self._entries:
            self._place(label, editor, compact and columns == 2)

    def _place(self, label: QtWidgets.QLabel, editor: QtWidgets.QWidget, compact: bool) -> None:
        if not compact or self._column >= 4:  # two compact fields per row
            if self._column:
                self._row += 1
            self._column = 0
        if compact:
            self.grid.addWidget(label, self._row, self._column)
            self.grid.addWidget(editor, self._row, self._column + 1)
            self._column += 2
        else:
            if editor.sizeHint().height() > 2 * label.sizeHint().height():  # a text box: label at its top
                label.setAlignment(QtCore.Qt.AlignLeft | QtCore.Qt.AlignTop)
                label.setContentsMargins(0, 4, 0, 0)
            self.grid.addWidget(label, self._row, 0)
            self.grid.addWidget(editor, self._row, 1, 1, 3)
            self._row += 1


class ParamForm(QtWidgets.QWidget):
    changed = Signal()

    def __init__(self, pipeline: pb.PipelineInfo, models: Sequence[tuple[str, str]] = (),
                 parent: QtWidgets.QWidget | None = None, *, catalogue: Sequence[tuple[str, ...]] = (),
                 limits: dict[str, int] | None = None, addons: Sequence[tuple[str, str]] = (),
                 addon_catalogue: Sequence[tuple[str, str, str]] = ()):
        super().__init__(parent)
        self.addons = list(addons)  # (label, path) of the server's LoRAs, for the LoRA picker
        self.addon_catalogue = list(addon_catalogue)  # (label, id, kind) of every add-on, for add-on options
        self.pipeline = pipeline.name
        self.output_is_folder = pipeline.output_is_folder
        self.catalogue = list(catalogue)
        # the server's own limits (max_width/max_height) bound the widgets, not the options' generic ranges
        self.fields: list[FieldSpec] = [_bounded(f, (limits or {}).get(f.name)) for f in pipeline_fields(pipeline)]
        self.editors: dict[str, FieldEditor] = {}
        self.labels: dict[str, QtWidgets.QLabel] = {}
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(4)

        prompts = [f for f in self.fields if f.is_common and f.type == "text"]
        key = [f for f in self.fields if f.is_common and f.name in (SEED_FIELD, MODEL_FIELD)]
        own = [f for f in self.fields if not f.is_common]
        rest = [f for f in self.fields if f.is_common and f not in prompts and f not in key]

        top = Section("Prompt")
        top.toggle.hide()  # the prompt is always open
        self._fill(top, prompts + key, models, compact_types=())
        layout.addWidget(top)
        if own:
            section = Section(f"{pipeline.name.capitalize()} options")
            self._fill(section, own, models)
            layout.addWidget(section)
        settings = Section("Settings", expanded=True)
        self._fill(settings, rest, models)
        layout.addWidget(settings)
        layout.addStretch(1)

    def _fill(self, section: Section, specs: Iterable[FieldSpec], models: Sequence[tuple[str, str]],
              compact_types: tuple[str, ...] = _COMPACT_TYPES) -> None:
        for spec in specs:
            editor = make_editor(spec, models=models, catalogue=self.catalogue, addons=self.addons,
                                 addon_catalogue=self.addon_catalogue)
            label = QtWidgets.QLabel(spec.label)
            label.setWordWrap(True)  # a long label takes two lines rather than widening the form past the dock
            label.setToolTip(spec.tooltip)
            label.setBuddy(editor)
            editor.changed.connect(self.changed.emit)
            self.editors[spec.name], self.labels[spec.name] = editor, label
            section.add(label, editor, compact=spec.type in compact_types)

    def fit_width(self, width: int) -> None:
        """Two compact fields a row where `width` (the dock's) holds them, one a row where it does not: the
        form never reaches past a narrow dock (there is no horizontal scroll bar)."""
        sections = self.findChildren(Section)
        columns = 2 if all(width >= s.two_column_width() for s in sections) else 1  # one look for the whole form
        for section in sections:
            section.set_columns(columns)

    # ---- values ---------------------------------------------------------------------------
    def has_field(self, name: str) -> bool:
        return name in self.editors

    @property
    def seed_editor(self) -> SeedEditor | None:
        editor = self.editors.get(SEED_FIELD)
        return editor if isinstance(editor, SeedEditor) else None

    def values(self) -> dict[str, Any]:
        return {name: editor.value() for name, editor in self.editors.items()}

    def set_values(self, values: dict[str, Any]) -> None:
        """Fill the fields this form has; others (from another pipeline or version) are ignored."""
        for name, value in values.items():
            if name in self.editors:
                self.editors[name].set_value(value)

    # ---- errors ---------------------------------------------------------------------------
    def plain_sentence(self, sentence: str) -> str:
        """A server message as the form names things: `--keep-first-frame` becomes Keep the first frame."""
        return plain_help(sentence, {spec.name: spec.label for spec in self.fields})

    def highlight_fields_named_in(self, sentence: str) -> list[str]:
        """Mark the fields a server message starts by naming ("Width 100 is not…"), or whose path it quotes ("No
        frames of the plate '/p/bg.####.exr' were found"); returns their names."""
        lowered = sentence.lower()
        named = [spec.name for spec in self.fields
                 if lowered.startswith(spec.label.lower() + " ") or lowered.startswith(spec.name + " ")]
        values = self.values()
        named += [spec.name for spec in self.fields if spec.type == "path" and spec.name not in named
                  and isinstance(values.get(spec.name), str) and values[spec.name].strip()
                  and f"'{values[spec.name].strip()}'" in sentence]
        self.clear_highlights()
        for name in named:
            for widget in self._marked_widgets(name):
                _set_invalid(widget, True)
        return named

    def open_section_of(self, name: str) -> QtWidgets.QWidget:
        """Unfold the section that holds field `name` (the artist may have folded it); returns its editor."""
        editor = self.editors[name]
        for section in self.findChildren(Section):
            if section.body.isAncestorOf(editor) and not section.toggle.isChecked():
                section.toggle.setChecked(True)
        return editor

    def clear_highlights(self) -> None:
        for name in self.editors:
            for widget in self._marked_widgets(name):
                if widget.property("invalid"):
                    _set_invalid(widget, False)

    def _marked_widgets(self, name: str) -> list[QtWidgets.QWidget]:
        editor = self.editors[name]
        return [self.labels[name], editor, *editor.findChildren(QtWidgets.QWidget)]


def _min_width(widget: QtWidgets.QWidget) -> int:
    """The width a layout will not squeeze a widget below (an explicit minimum wins over the hint)."""
    return widget.minimumWidth() or widget.minimumSizeHint().width()


def _bounded(spec: FieldSpec, limit: int | None) -> FieldSpec:
    if not limit or not spec.is_common or (spec.maximum is not None and spec.maximum <= limit):
        return spec
    return dataclasses.replace(spec, maximum=float(limit))


def _set_invalid(widget: QtWidgets.QWidget, invalid: bool) -> None:
    widget.setProperty("invalid", invalid)
    widget.style().unpolish(widget)  # re-read the style sheet's [invalid="true"] rules
    widget.style().polish(widget)
