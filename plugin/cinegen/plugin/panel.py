"""`cinegen.plugin.panel.Panel`: the dockable widget a host registers (Nuke's `registerWidgetAsPanel`
instantiates it with no arguments; the host adapter is detected)."""
from __future__ import annotations

from .ui.panel import Panel

__all__ = ["Panel"]
