"""`python -m cinegen.plugin [--output DIR]`: the panel in its own window, outside any host."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cinegen.plugin", description=__doc__)
    parser.add_argument("--output", default=None, help="Root of the versioned output folders.")
    args = parser.parse_args(argv)
    from .hosts.standalone import StandaloneHost
    from .qt import QtWidgets, ensure_application
    from .ui.panel import Panel
    from .ui.style import dark_palette

    app = ensure_application()
    app.setStyle(QtWidgets.QStyleFactory.create("Fusion"))
    app.setPalette(dark_palette())
    panel = Panel(host=StandaloneHost(args.output))
    panel.resize(420, 760)
    panel.show()
    return (getattr(app, "exec", None) or app.exec_)()


if __name__ == "__main__":
    sys.exit(main())
