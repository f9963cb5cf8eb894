"""Nuke runs this in GUI sessions: the cinegen panel as a dockable pane, and a menu to open it.

The pane is registered by class path (`cinegen.plugin.panel.Panel`), so Nuke restores it with a
saved layout; "cinegen > Show panel" docks it next to the Properties bin.
"""
import nuke
import nukescripts

PANEL_CLASS = "cinegen.plugin.panel.Panel"
PANEL_ID = "uk.co.cinegen.panel"
PANEL_TITLE = "cinegen"


_panel = None  # one panel per session: its queue and connection live as long as Nuke


def show_panel():
    """Dock the panel beside the Properties bin (or float it when that pane is not there)."""
    global _panel
    if _panel is None:
        _panel = nukescripts.panels.registerWidgetAsPanel(PANEL_CLASS, PANEL_TITLE, PANEL_ID, True)
    panel = _panel
    pane = nuke.getPaneFor("Properties.1")
    if pane is not None:
        panel.addToPane(pane)
    else:
        panel.show()
    return panel


def register():
    nukescripts.panels.registerWidgetAsPanel(PANEL_CLASS, PANEL_TITLE, PANEL_ID)  # for Windows > Custom
    menu = nuke.menu("Nuke").addMenu("cinegen")
    menu.addCommand("Show panel", show_panel, "ctrl+alt+g")
    nuke.menu("Pane").addCommand(PANEL_TITLE, show_panel)


register()
