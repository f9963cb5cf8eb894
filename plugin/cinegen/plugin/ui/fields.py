"""One editor widget per parameter type (int, float, bool, string, text, enum, path, list, lora, model, addon).

Every editor has `value()`, `set_value(v)` and a `changed` signal; an optional number shows "auto"
at the bottom of its range and reads back as None (the server decides). The seed and the model get
their own editors because they are contract fields of every pipeline, not pipeline options.
"""
from __future__ import annotations

import random
from typing import Any, Sequence

from ..model.forms import MODEL_FIELD, SEED_FIELD, FieldSpec, offered_addons, offered_models
from ..qt import QtCore, QtGui, QtWidgets, Signal

INT32_MAX = 2**31 - 1
AUTO = "auto"
SEED_MAX = 2**31 - 1  # randomised seeds stay in int32 so every host can show them
NUMBER_MIN_WIDTH = 80  # px: a number box may shrink to this (7 digits) however wide its range's largest value is
COMBO_CHARACTERS = 12  # a picker with longer entries is this wide at least, not as wide as its longest entry


def _narrow_number_box(box: QtWidgets.QAbstractSpinBox) -> None:
    """Two number fields share a row of a narrow dock: a wide range (first frame up to 10 000 000) must not
    push the row past it; the box still takes its full width when the dock has room."""
    box.setMinimumWidth(min(box.minimumSizeHint().width(), NUMBER_MIN_WIDTH))


def fit_combo(combo: QtWidgets.QComboBox, characters: int = COMBO_CHARACTERS) -> None:
    """A combo box sized for a narrow dock: long entries (model and LoRA names) no longer widen the form
    past the dock; the open list is as wide as its longest entry, so they stay readable there."""
    longest = max((len(combo.itemText(i)) for i in range(combo.count())), default=0)
    if longest <= characters:
        return  # short choices (zip, view, sequential) keep their natural width
    combo.setSizeAdjustPolicy(QtWidgets.QComboBox.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(characters)
    combo.view().setMinimumWidth(combo.view().sizeHintForColumn(0) + 24)


class FieldEditor(QtWidgets.QWidget):
    changed = Signal()

    def __init__(self, spec: FieldSpec, parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.spec = spec
        self.setToolTip(spec.tooltip)
        self.setObjectName(f"field_{spec.name}")
        self._layout = QtWidgets.QHBoxLayout(self)
        self._layout.setContentsMargins(0, 0, 0, 0)
        self._layout.setSpacing(4)

    def value(self) -> Any:
        raise NotImplementedError

    def set_value(self, value: Any) -> None:
        raise NotImplementedError


class IntEditor(FieldEditor):
    def __init__(self, spec: FieldSpec, parent=None):
        super().__init__(spec, parent)
        self.box = QtWidgets.QSpinBox()
        low = int(spec.minimum) if spec.minimum is not None else -INT32_MAX
        high = min(int(spec.maximum), INT32_MAX) if spec.maximum is not None else INT32_MAX
        step = max(1, int(spec.step or 1))
        if spec.optional:
            low -= step  # the value below the range reads "auto"
            self.box.setSpecialValueText(AUTO)
        elif spec.automatic_at_minimum:
            self.box.setSpecialValueText(AUTO)  # e.g. Views per call: 0 = automatic, sent as 0
        self.box.setRange(low, high)
        self.box.setSingleStep(step)
        self.box.setAccelerated(True)
        self.box.valueChanged.connect(lambda _: self.changed.emit())
        _narrow_number_box(self.box)
        self._layout.addWidget(self.box)
        self.set_value(spec.default)

    def value(self) -> int | None:
        if self.spec.optional and self.box.value() == self.box.minimum():
            return None
        return self.box.value()

    def set_value(self, value: Any) -> None:
        self.box.setValue(self.box.minimum() if value is None else int(value))


class FloatEditor(FieldEditor):
    def __init__(self, spec: FieldSpec, parent=None):
        super().__init__(spec, parent)
        self.box = QtWidgets.QDoubleSpinBox()
        step = spec.step or 0.1
        self.box.setDecimals(3 if step < 0.05 else 2)
        low = spec.minimum if spec.minimum is not None else -1e9
        high = spec.maximum if spec.maximum is not None else 1e9
        if spec.optional:
            low -= step
            self.box.setSpecialValueText(AUTO)
        self.box.setRange(low, high)
        self.box.setSingleStep(step)
        self.box.valueChanged.connect(lambda _: self.changed.emit())
        _narrow_number_box(self.box)
        self._layout.addWidget(self.box)
        self.set_value(spec.default)

    def value(self) -> float | None:
        if self.spec.optional and self.box.value() <= self.box.minimum():
            return None
        return self.box.value()

    def set_value(self, value: Any) -> None:
        self.box.setValue(self.box.minimum() if value is None else float(value))


class BoolEditor(FieldEditor):
    def __init__(self, spec: FieldSpec, parent=None):
        super().__init__(spec, parent)
        self.box = QtWidgets.QCheckBox()
        self.box.toggled.connect(lambda _: self.changed.emit())
        self._layout.addWidget(self.box)
        self.set_value(spec.default)

    def value(self) -> bool:
        return self.box.isChecked()

    def set_value(self, value: Any) -> None:
        self.box.setChecked(bool(value))


class StringEditor(FieldEditor):
    def __init__(self, spec: FieldSpec, parent=None):
        super().__init__(spec, parent)
        self.edit = QtWidgets.QLineEdit()
        self.edit.setPlaceholderText(_placeholder(spec))
        self.edit.textChanged.connect(lambda _: self.changed.emit())
        self._layout.addWidget(self.edit)
        self.set_value(spec.default)

    def value(self) -> str | None:
        text = self.edit.text()
        return None if self.spec.optional and not text.strip() else text

    def set_value(self, value: Any) -> None:
        self.edit.setText("" if value is None else str(value))


class ListEditor(StringEditor):
    """A comma-separated list (e.g. shot ids)."""

    def value(self) -> list[str]:
        return [item.strip() for item in self.edit.text().split(",") if item.strip()]

    def set_value(self, value: Any) -> None:
        self.edit.setText(", ".join(value) if isinstance(value, (list, tuple)) else str(value or ""))


class LoraEditor(ListEditor):
    """LoRAs as PATH[:WEIGHT], comma-separated, with a picker of the server's LoRAs and motion LoRAs
    (the capabilities' add-ons): picking one adds it at the weight beside the picker.

    Two rows: the list over the whole width (paths are long), the picker and its weight under it."""

    def __init__(self, spec: FieldSpec, parent=None, addons: Sequence[tuple[str, str]] = ()):
        super().__init__(spec, parent)
        self._layout.setDirection(QtWidgets.QBoxLayout.TopToBottom)
        self._layout.setSpacing(2)
        self.edit.setPlaceholderText("pick below, or type PATH:WEIGHT, …")
        self.picker = QtWidgets.QComboBox()
        self.picker.setObjectName("loraPicker")
        self.picker.addItem("add a LoRA…", "")
        for label, path in addons:
            self.picker.addItem(label, path)
        self.picker.setEnabled(bool(addons))
        self.picker.setToolTip("LoRAs found beside the server's models." if addons else
                               "The server has no LoRAs beside its models; type a path on the server.")
        self.weight = QtWidgets.QDoubleSpinBox()
        self.weight.setObjectName("loraWeight")
        self.weight.setRange(-4.0, 4.0)
        self.weight.setSingleStep(0.1)
        self.weight.setValue(1.0)
        self.weight.setPrefix("at ")  # reads on from the picker: "add a LoRA… at 1.00"
        self.weight.setSizePolicy(QtWidgets.QSizePolicy.Fixed, QtWidgets.QSizePolicy.Fixed)  # the picker takes the room
        self.weight.setToolTip("Weight of the LoRA picked next (1 = as trained, 0 = off).")
        self.picker.activated.connect(self._pick)
        fit_combo(self.picker, characters=6)
        row = QtWidgets.QHBoxLayout()
        row.setSpacing(4)
        row.addWidget(self.picker, 1)
        row.addWidget(self.weight)
        self._layout.addLayout(row)

    def _pick(self, index: int) -> None:
        path = self.picker.itemData(index)
        if path:
            weight = self.weight.value()
            self.set_value(self.value() + [path if weight == 1.0 else f"{path}:{weight:g}"])
        self.picker.setCurrentIndex(0)


class TextEditor(FieldEditor):
    """Several lines (prompts, inline documents)."""

    def __init__(self, spec: FieldSpec, parent=None, lines: int = 3):
        super().__init__(spec, parent)
        self.edit = QtWidgets.QPlainTextEdit()
        self.edit.setPlaceholderText(_placeholder(spec))
        self.edit.setTabChangesFocus(True)
        height = self.edit.fontMetrics().lineSpacing() * lines + 12
        self.edit.setFixedHeight(height)
        self.edit.textChanged.connect(self.changed.emit)
        self._layout.addWidget(self.edit)
        self.set_value(spec.default)

    def value(self) -> str:
        return self.edit.toPlainText()

    def set_value(self, value: Any) -> None:
        self.edit.setPlainText("" if value is None else str(value))


class EnumEditor(FieldEditor):
    def __init__(self, spec: FieldSpec, parent=None, choices: Sequence[tuple[str, str]] | None = None):
        super().__init__(spec, parent)
        self.combo = QtWidgets.QComboBox()
        for text, data in choices if choices is not None else [(c, c) for c in spec.choices]:
            self.combo.addItem(text, data)
        fit_combo(self.combo)
        self.combo.currentIndexChanged.connect(lambda _: self.changed.emit())
        self._layout.addWidget(self.combo)
        self.set_value(spec.default)

    def value(self) -> Any:
        return self.combo.currentData()

    def set_value(self, value: Any) -> None:
        index = self.combo.findData("" if value is None and self.combo.findData("") >= 0 else value)
        if index < 0 and value not in (None, ""):
            self.combo.addItem(f"{value} (not on this server)", value)  # keep what the artist had
            index = self.combo.count() - 1
        if index >= 0:
            self.combo.setCurrentIndex(index)


class PathEditor(StringEditor):
    """A file or sequence path with a browse button."""

    def __init__(self, spec: FieldSpec, parent=None):
        super().__init__(spec, parent)
        browse = QtWidgets.QToolButton()
        browse.setText("…")
        browse.setToolTip("Browse for a file on this machine.")
        browse.clicked.connect(self._browse)
        self._layout.addWidget(browse)

    def _browse(self) -> None:
        path, _ = QtWidgets.QFileDialog.getOpenFileName(self, self.spec.label, self.edit.text())
        if path:
            self.edit.setText(path)


class SeedEditor(FieldEditor):
    """The seed, with a lock: unlocked, every Generate draws a new seed (and shows it)."""

    def __init__(self, spec: FieldSpec, parent=None, rng: random.Random | None = None):
        super().__init__(spec, parent)
        self.rng = rng or random.Random()
        self.edit = QtWidgets.QLineEdit()
        self.edit.setValidator(QtGui.QRegularExpressionValidator(QtCore.QRegularExpression(r"\d{0,18}"), self))
        self.edit.setPlaceholderText("random")
        self.edit.textChanged.connect(lambda _: self.changed.emit())
        self.lock = QtWidgets.QToolButton()
        self.lock.setCheckable(True)
        self.lock.setObjectName("seedLock")
        self.lock.setToolTip("Locked: Generate keeps this seed. Unlocked: every Generate uses a new random seed.")
        self.lock.toggled.connect(self._show_lock)
        self.dice = QtWidgets.QToolButton()
        self.dice.setText("⚄")
        self.dice.setObjectName("seedDice")
        self.dice.setToolTip("Draw a new random seed now.")
        self.dice.clicked.connect(self.randomise)
        self._layout.addWidget(self.edit, 1)
        self._layout.addWidget(self.lock)
        self._layout.addWidget(self.dice)
        self._show_lock(False)
        self.set_value(spec.default)

    @property
    def locked(self) -> bool:
        return self.lock.isChecked()

    def set_locked(self, locked: bool) -> None:
        self.lock.setChecked(locked)

    def _show_lock(self, locked: bool) -> None:
        self.lock.setText("Locked" if locked else "Lock")

    def randomise(self) -> int:
        seed = self.rng.randrange(SEED_MAX)
        self.edit.setText(str(seed))
        return seed

    def seed_for_next_job(self) -> int:
        """The seed Generate uses: the shown one when locked (or typed), else a fresh one."""
        if self.locked and self.edit.text():
            return int(self.edit.text())
        return self.randomise()

    def value(self) -> int | None:
        return int(self.edit.text()) if self.edit.text() else None

    def set_value(self, value: Any) -> None:
        self.edit.setText("" if value is None else str(int(value)))


def _placeholder(spec: FieldSpec) -> str:
    if spec.type == "path":
        return "DIR/NAME.####.exr" if "####" in spec.help or "exr" in spec.help.lower() else "path"
    return "auto" if spec.optional else ""


def make_editor(spec: FieldSpec, *, models: Sequence[tuple[str, str]] = (),
                catalogue: Sequence[tuple[str, ...]] = (), addons: Sequence[tuple[str, str]] = (),
                addon_catalogue: Sequence[tuple[str, str, str]] = ()) -> FieldEditor:
    """The editor for one field, chosen by its type (the seed and model by their contract names).

    `models`: (label, id) of the pipeline's models; `catalogue`: (label, id, family, kind) of every model on
    the server, for other model-typed options (a picker of the families and kinds the option names);
    `addons`: (label, path) of the server's LoRAs and motion LoRAs, for the LoRA picker; `addon_catalogue`:
    (label, id, kind) of every add-on, for add-on-typed options (a picker of the kinds the option names)."""
    if spec.name == SEED_FIELD and spec.is_common:
        return SeedEditor(spec)
    if spec.name == MODEL_FIELD and spec.is_common:
        return EnumEditor(spec, choices=[("default for this pipeline", "")] + list(models))
    if spec.type == "model":
        return EnumEditor(spec, choices=[(spec.empty_choice, "")] + offered_models(spec, catalogue))
    if spec.type == "addon":
        return EnumEditor(spec, choices=[(spec.empty_choice, "")] + offered_addons(spec, addon_catalogue))
    if spec.type == "lora":
        return LoraEditor(spec, addons=addons)
    editor_for_type = {"int": IntEditor, "float": FloatEditor, "bool": BoolEditor, "text": TextEditor,
                       "enum": EnumEditor, "path": PathEditor, "list": ListEditor}
    return editor_for_type.get(spec.type, StringEditor)(spec)
