"""Connection status bar, connection settings dialog, and the banner that shows errors as sentences."""
from __future__ import annotations

import dataclasses

from cinegen.common.connection import ConnectionSettings

from ..qt import QtCore, QtGui, QtWidgets, Signal
from .style import STATE_COLOURS


class ElidedLabel(QtWidgets.QLabel):
    """One line that ends in "…" where the bar is too narrow for it (the whole text stays `text()` and the
    tooltip); a plain label cut it mid-letter ("127.0.0.1:50051 · cineger")."""

    def paintEvent(self, event: QtGui.QPaintEvent) -> None:  # noqa: N802 (Qt's name)
        painter = QtGui.QPainter(self)
        rect = self.contentsRect()
        shown = self.fontMetrics().elidedText(self.text(), QtCore.Qt.ElideRight, rect.width())
        self.style().drawItemText(painter, rect, int(self.alignment()), self.palette(), self.isEnabled(), shown,
                                  self.foregroundRole())


class ConnectionBar(QtWidgets.QWidget):
    connect_requested = Signal()
    settings_requested = Signal()

    def __init__(self, parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.dot = QtWidgets.QLabel("●")
        self.dot.setObjectName("statusDot")
        self.text = ElidedLabel("Not connected")
        self.text.setObjectName("statusText")
        self.text.setSizePolicy(QtWidgets.QSizePolicy.Ignored, QtWidgets.QSizePolicy.Preferred)
        self.connect_button = QtWidgets.QToolButton()
        self.connect_button.setText("Connect")
        self.connect_button.setToolTip("Connect (again) to the server in the connection settings.")
        self.connect_button.clicked.connect(self.connect_requested.emit)
        self.settings_button = QtWidgets.QToolButton()
        self.settings_button.setText("Settings")
        self.settings_button.setToolTip("Server address, access token, TLS, shared disk.")
        self.settings_button.clicked.connect(self.settings_requested.emit)
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(6)
        layout.addWidget(self.dot)
        layout.addWidget(self.text, 1)
        layout.addWidget(self.connect_button)
        layout.addWidget(self.settings_button)
        self.state = "disconnected"
        self.show_status("disconnected", "Not connected")

    def show_status(self, state: str, message: str) -> None:
        self.state = state
        self.dot.setStyleSheet(f"color: {STATE_COLOURS.get(state, '#8c8c8c')};")
        self.text.setText(_short_status(state, message))
        self.text.setToolTip(message)
        self.connect_button.setText("Reconnect" if state == "connected" else "Connect")


def _short_status(state: str, message: str) -> str:
    """One short line for the bar (the whole message is its tooltip and, on errors, the banner)."""
    if state == "connected":
        return message.replace("Connected to ", "")
    return {"connecting": "Connecting…", "retrying": "Can't reach the server — retrying",
            "failed": "Not connected — see the message below", "disconnected": "Not connected"}.get(state, message)


class Banner(QtWidgets.QFrame):
    """A sentence for the artist: an error (what went wrong and what to do) or a note."""

    def __init__(self, parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("banner")
        self.label = QtWidgets.QLabel()
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(QtCore.Qt.TextSelectableByMouse)
        close = QtWidgets.QToolButton()
        close.setText("✕")
        close.setToolTip("Dismiss")
        close.clicked.connect(self.clear)
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(6, 4, 4, 4)
        layout.addWidget(self.label, 1)
        layout.addWidget(close, 0, QtCore.Qt.AlignTop)
        self.kind = ""
        self.hide()

    def show_message(self, text: str, kind: str = "error") -> None:
        self.kind = kind
        self.setProperty("kind", kind)
        self.style().unpolish(self)
        self.style().polish(self)
        self.label.setText(text)
        self.show()

    def clear(self) -> None:
        self.kind = ""
        self.label.clear()
        self.hide()

    @property
    def text(self) -> str:
        return self.label.text() if self.isVisible() or self.kind else ""


class SettingsDialog(QtWidgets.QDialog):
    """Edit ConnectionSettings; `settings()` returns the edited copy."""

    def __init__(self, settings: ConnectionSettings, parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("cinegen connection")
        self._base = settings
        self.host = QtWidgets.QLineEdit(settings.host)
        self.port = QtWidgets.QSpinBox()
        self.port.setRange(1, 65535)
        self.port.setValue(settings.port)
        self.token = QtWidgets.QLineEdit(settings.token)
        self.token.setEchoMode(QtWidgets.QLineEdit.Password)
        self.token.setPlaceholderText("none")
        self.tls = QtWidgets.QCheckBox("Use TLS")
        self.tls.setChecked(settings.tls)
        self.root_cert = QtWidgets.QLineEdit(settings.root_cert)
        self.root_cert.setPlaceholderText("system certificates")
        # Mutual TLS: a server started with --tls-client-ca only talks to clients with a certificate it signed.
        self.client_cert = QtWidgets.QLineEdit(settings.client_cert)
        self.client_cert.setPlaceholderText("none (the server does not ask for one)")
        self.client_key = QtWidgets.QLineEdit(settings.client_key)
        self.client_key.setPlaceholderText("the private key of that certificate")
        self.shared_disk = QtWidgets.QCheckBox("The server writes to a disk this machine can read")
        self.shared_disk.setChecked(settings.shared_disk)
        self.shared_disk.setToolTip("Off: plates are uploaded to the server and results downloaded here.")
        self.download_dir = QtWidgets.QLineEdit(settings.download_dir)
        self.download_dir.setPlaceholderText("the host's output folder")
        form = QtWidgets.QFormLayout()
        form.addRow("Host", self.host)
        form.addRow("Port", self.port)
        form.addRow("Access token", self.token)
        form.addRow("", self.tls)
        form.addRow("Root certificate (PEM)", self.root_cert)
        form.addRow("Client certificate (PEM)", self.client_cert)
        form.addRow("Client key (PEM)", self.client_key)
        form.addRow("", self.shared_disk)
        form.addRow("Download results to", self.download_dir)
        buttons = QtWidgets.QDialogButtonBox(QtWidgets.QDialogButtonBox.Ok | QtWidgets.QDialogButtonBox.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QtWidgets.QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(buttons)

    def settings(self) -> ConnectionSettings:
        return dataclasses.replace(
            self._base, host=self.host.text().strip() or "127.0.0.1", port=self.port.value(),
            token=self.token.text().strip(), tls=self.tls.isChecked(), root_cert=self.root_cert.text().strip(),
            client_cert=self.client_cert.text().strip(), client_key=self.client_key.text().strip(),
            shared_disk=self.shared_disk.isChecked(), download_dir=self.download_dir.text().strip())
