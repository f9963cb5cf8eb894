"""Nuke runs this in GUI sessions: the cinegen panel as a dockable pane, and a menu to open it.

`registerWidgetAsPanel` does not take a class: it takes a *string of Python* that Nuke evaluates
later in its own `__main__` namespace, where `cinegen` is not bound. The string therefore imports
what it names (`__import__(...)` is an expression, so it works inside `eval`), and the pane is
registered once: the registration both lists it under Windows > Custom and restores it with a
saved layout; "cinegen > Show panel" docks that same pane next to the Properties bin, or brings
forward the cinegen pane already open (one a saved layout restored), so there is one queue.
"""
import nuke
import nukescripts

PANEL_MODULE = "cinegen.plugin.panel"
# Evaluated by Nuke in __main__: resolves with nothing imported there beforehand.
PANEL_WIDGET = f"__import__({PANEL_MODULE!r}, fromlist=['Panel']).Panel"
PANEL_ID = "uk.co.cinegen.panel"
PANEL_TITLE = "cinegen"

_panel = None  # the one registered pane: its queue and connection live as long as Nuke


def show_panel():
    """Dock the panel beside the Properties bin (or float it when that pane is not there); when a cinegen pane is
    open already (Nuke restored it with a saved layout, or Windows > Custom made it) bring that one forward: a
    second panel would be a second connection with its own queue."""
    from cinegen.plugin.ui.open_panels import open_panel, reveal

    shown = open_panel("nuke")
    if shown is not None:
        reveal(shown)
        return _panel
    pane = nuke.getPaneFor("Properties.1")
    if pane is not None:
        _panel.addToPane(pane)
    else:
        _panel.show()
    return _panel


def register():
    global _panel
    if _panel is None:  # menu.py may be sourced twice (plugin path listed twice): one pane only
        _panel = nukescripts.panels.registerWidgetAsPanel(PANEL_WIDGET, PANEL_TITLE, PANEL_ID, True)
        # (registerWidgetAsPanel itself adds the Pane menu entry and the layout restore hook)
        menu = nuke.menu("Nuke").addMenu("cinegen")
        menu.addCommand("Show panel", show_panel, "ctrl+alt+g")
    return _panel


register()
