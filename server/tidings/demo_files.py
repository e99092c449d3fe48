"""The files of the demo page: the page itself and the JS client it imports.

The page (``index.html``, ``app.js``, ``style.css``) is package data in
``tidings/static``. The JS client, served under ``/client/``, has one copy in
the repository, ``client_js/src``: a built wheel carries it as
``tidings/static/client/`` (``setup.py`` copies it at build time), and an
editable install (``pip install -e .``, what ``scripts/run.sh`` and
``scripts/test.sh`` make) reads it from the checkout. Nothing here is cached:
a changed client file is served at the next request.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["CLIENT_PREFIX", "CLIENT_SOURCE", "VENDOR_FILES", "VENDOR_SOURCE", "dashboard_file",
           "demo_file"]

CLIENT_PREFIX = "client/"
# client_js/src of the checkout this module runs from (server/tidings/ -> the root)
CLIENT_SOURCE = Path(__file__).resolve().parents[2] / "client_js" / "src"

# The dashboard's charting library (uPlot, from npm): a wheel carries these in
# tidings/static/dashboard/vendor/ (setup.py copies them at build time); an
# editable checkout serves them from client_js's node_modules.
VENDOR_SOURCE = CLIENT_SOURCE.parent / "node_modules" / "uplot" / "dist"
VENDOR_FILES = ("uPlot.iife.min.js", "uPlot.min.css")

_NOT_A_FILE = (FileNotFoundError, IsADirectoryError, NotADirectoryError)


def demo_file(name: str) -> bytes | None:
    """The bytes of the demo page's file ``name`` (``index.html``,
    ``client/index.js``), or None when there is no such file.

    ``name`` is relative and already checked by the caller: no ``..`` segment,
    no leading dot.
    """
    try:
        return resources.files("tidings").joinpath("static", name).read_bytes()
    except _NOT_A_FILE:
        pass
    if not name.startswith(CLIENT_PREFIX):
        return None
    leaf = name[len(CLIENT_PREFIX):]
    if not leaf or "/" in leaf or "\\" in leaf:
        return None  # client_js/src is flat: nothing below it is served
    try:
        return (CLIENT_SOURCE / leaf).read_bytes()
    except _NOT_A_FILE:
        return None


def dashboard_file(name: str) -> bytes | None:
    """The bytes of the dashboard's file ``name`` (``index.html``,
    ``vendor/uPlot.iife.min.js``), or None. ``name`` is checked by the caller
    (no ``..``, no leading dot)."""
    try:
        return resources.files("tidings").joinpath("static", "dashboard", name).read_bytes()
    except _NOT_A_FILE:
        pass
    leaf = name.removeprefix("vendor/")
    if leaf == name or leaf not in VENDOR_FILES:
        return None
    try:
        return (VENDOR_SOURCE / leaf).read_bytes()
    except _NOT_A_FILE:
        return None
