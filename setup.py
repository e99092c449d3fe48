"""Build hook: the wheel carries the JS client the demo page imports, and the
dashboard's charting library.

The demo page (``tidings/static``) loads the client from ``/client/*.js``.
Its one copy is ``client_js/src``; ``build_py`` copies those files into the
wheel's ``tidings/static/client/`` at build time, so git holds no second copy.
An editable install (``pip install -e .``) copies nothing: the WebSocket
edge serves ``/client/`` from ``client_js/src`` of the checkout instead
(``tidings.demo_files``).

The dashboard draws its charts with uPlot, vendored from npm at build time:
``client_js``'s dev dependencies hold it (``npm ci`` in ``client_js``, which
the test command runs); a build finds it there, runs ``npm ci`` itself when it
is missing and npm is on PATH, and stops with what to do otherwise. Nothing is
fetched from a CDN at run time. Everything else about the package is in
``pyproject.toml``.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

CLIENT_SOURCE = Path(__file__).resolve().parent / "client_js" / "src"
VENDOR_SOURCE = CLIENT_SOURCE.parent / "node_modules" / "uplot" / "dist"
VENDOR_FILES = ("uPlot.iife.min.js", "uPlot.min.css")


def vendor_sources() -> list[Path]:
    """uPlot's files from client_js's node_modules (``npm ci`` there if missing)."""
    if not all((VENDOR_SOURCE / f).is_file() for f in VENDOR_FILES):
        npm = shutil.which("npm")
        if npm is None or not (CLIENT_SOURCE.parent / "package-lock.json").is_file():
            raise SystemExit("build: the dashboard's chart library (uplot) is not in "
                             "client_js/node_modules; run `npm ci` in client_js (Node 20, npm)")
        subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                       cwd=CLIENT_SOURCE.parent, check=True)
    return [VENDOR_SOURCE / f for f in VENDOR_FILES]


class BuildPyWithClient(build_py):
    """``build_py``, then ``client_js/src/*.js`` into ``tidings/static/client/``."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # served from the checkout (see the module docstring)
        sources = sorted(CLIENT_SOURCE.glob("*.js"))
        if not sources:
            raise SystemExit(f"build: no JS client in {CLIENT_SOURCE}; the demo page needs it")
        target = Path(self.build_lib) / "tidings" / "static" / "client"
        self.mkpath(str(target))
        for source in sources:
            # always copied (copy_file skips a target newer than its source): the
            # wheel carries client_js/src as it is, whatever an earlier build left
            shutil.copyfile(source, target / source.name)
        vendor = Path(self.build_lib) / "tidings" / "static" / "dashboard" / "vendor"
        self.mkpath(str(vendor))
        for source in vendor_sources():
            shutil.copyfile(source, vendor / source.name)


setup(cmdclass={"build_py": BuildPyWithClient})
