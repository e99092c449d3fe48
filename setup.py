"""Build hook: the wheel carries the JS client the demo page imports.

The demo page (``tidings/static``) loads the client from ``/client/*.js``.
Its one copy is ``client_js/src``; ``build_py`` copies those files into the
wheel's ``tidings/static/client/`` at build time, so git holds no second copy.
An editable install (``pip install -e .``) copies nothing: the WebSocket
edge serves ``/client/`` from ``client_js/src`` of the checkout instead
(``tidings.demo_files``). Everything else about the package is in
``pyproject.toml``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

CLIENT_SOURCE = Path(__file__).resolve().parent / "client_js" / "src"


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


setup(cmdclass={"build_py": BuildPyWithClient})
