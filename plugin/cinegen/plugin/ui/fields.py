"""One editor widget per parameter type (int, float, bool, string, text, enum, path, list, lora).

Every editor has `value()`, `set_value(v)` and a `changed` signal; an optional number shows "auto"
at the bottom of its range and reads back as None (the server decides). The seed and the model get
their own editors because they are contract fields of every pipeline, not pipeline options.
"""
from __future__ import annotations

import random
from typing import Any, Sequence

from ..model.forms import MODEL_FIELD, SEED_FIELD, FieldSpec
from ..qt import QtCore, QtGui, QtWidgets, Signal

INT32_MAX = 2**31 - 1
AUTO = "auto"
SEED_MAX = 2**31 - 1  # randomised seeds stay in int32 so every host can show them


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
        self.box.setRange(low, high)
        self.box.setSingleStep(step)
        self.box.setAccelerated(True)
        self.box.valueChanged.connect(lambda _: self.changed.emit())
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
    (the capabilities' add-ons): picking one adds it at the weight beside the picker."""

    def __init__(self, spec: FieldSpec, parent=None, addons: Sequence[tuple[str, str]] = ()):
        super().__init__(spec, parent)
        self.edit.setPlaceholderText("PATH[:WEIGHT], …")
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
        self.weight.setToolTip("Weight of the LoRA picked next (1 = as trained, 0 = off).")
        self.picker.activated.connect(self._pick)
        self._layout.addWidget(self.picker)
        self._layout.addWidget(self.weight)

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
                catalogue: Sequence[tuple[str, str, str]] = (), addons: Sequence[tuple[str, str]] = ()) -> FieldEditor:
    """The editor for one field, chosen by its type (the seed and model by their contract names).

    `models`: (label, id) of the pipeline's models; `catalogue`: (label, id, family) of every model on the
    server, for other model-typed options (a picker of the families the option names); `addons`: (label,
    path) of the server's LoRAs and motion LoRAs, for the LoRA picker."""
    if spec.name == SEED_FIELD and spec.is_common:
        return SeedEditor(spec)
    if spec.name == MODEL_FIELD and spec.is_common:
        return EnumEditor(spec, choices=[("default for this pipeline", "")] + list(models))
    if spec.type == "model":
        offered = [(label, model_id) for label, model_id, family in catalogue
                   if not spec.families or family in spec.families]
        return EnumEditor(spec, choices=[("server's choice", "")] + offered)
    if spec.type == "lora":
        return LoraEditor(spec, addons=addons)
    editor_for_type = {"int": IntEditor, "float": FloatEditor, "bool": BoolEditor, "text": TextEditor,
                       "enum": EnumEditor, "path": PathEditor, "list": ListEditor}
    return editor_for_type.get(spec.type, StringEditor)(spec)
