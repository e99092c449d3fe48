"""The demo page's JS client: one copy in git (``client_js/src``), served everywhere.

* A wheel, built from the checkout or from the sdist, carries the client as
  ``tidings/static/client/*.js`` (``setup.py`` copies it at build time), and
  a node installed from that wheel serves it from there.
* A checkout installed editable (``pip install -e .``, what ``scripts/test.sh``
  and ``scripts/run.sh`` make) serves ``/client/*.js`` from ``client_js/src``:
  an edit to the client is live at the next request, with no copy to refresh.

The builds run ``pip wheel --no-build-isolation`` with the setuptools and
wheel of the test environment (the ``test`` extra), so they need no index.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from conftest import WAIT, Node

ROOT = Path(__file__).resolve().parents[1]
CLIENT = ROOT / "client_js" / "src"
BUILD_BOUND = 60 * WAIT  # seconds for one sdist or wheel build on a busy 2-core machine
# what a fresh clone does not have (the .gitignore's entries and the VCS itself)
NOT_IN_A_CLONE = shutil.ignore_patterns(
    ".git", ".venv", "node_modules", "build", "dist", "*.egg-info", "__pycache__",
    ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis", "tidings-data", "results")


def client_files() -> dict[str, bytes]:
    files = {p.name: p.read_bytes() for p in sorted(CLIENT.glob("*.js"))}
    assert "index.js" in files  # what the demo page imports
    return files


def run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=BUILD_BOUND, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def build_wheel(source: Path, out: Path) -> Path:
    """``pip wheel`` of ``source`` (a folder or an sdist) into ``out``; the wheel's path."""
    out.mkdir(exist_ok=True)
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
        "--no-index", "-q", "-w", str(out), str(source), cwd=out)
    (wheel,) = out.glob("tidings-*.whl")
    return wheel


def wheel_client(wheel: Path) -> dict[str, bytes]:
    prefix = "tidings/static/client/"
    with zipfile.ZipFile(wheel) as z:
        return {name[len(prefix):]: z.read(name) for name in z.namelist()
                if name.startswith(prefix)}


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The checkout as a fresh clone has it, away from the tree under test (a build
    writes ``build/`` and ``*.egg-info`` beside its sources)."""
    dest = tmp_path_factory.mktemp("clone") / "tidings"
    shutil.copytree(ROOT, dest, ignore=NOT_IN_A_CLONE)
    assert not (dest / "server" / "tidings" / "static" / "client").exists()  # not in git
    return dest


@pytest.fixture(scope="module")
def wheel(clone: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(clone, tmp_path_factory.mktemp("wheel"))


def test_the_wheel_carries_the_js_client_of_client_js_src(wheel: Path) -> None:
    assert wheel_client(wheel) == client_files()


def test_the_wheel_vendors_the_dashboard_chart_library_from_npm(wheel: Path) -> None:
    """A fresh clone has no node_modules: the build ran ``npm ci`` itself and
    copied uPlot's files (the ones package-lock.json pins) into the package."""
    from tidings.demo_files import VENDOR_FILES, VENDOR_SOURCE

    prefix = "tidings/static/dashboard/vendor/"
    with zipfile.ZipFile(wheel) as z:
        vendored = {n[len(prefix):]: z.read(n) for n in z.namelist() if n.startswith(prefix)}
    assert vendored == {f: (VENDOR_SOURCE / f).read_bytes() for f in VENDOR_FILES}


def test_a_wheel_built_from_the_sdist_carries_it_too(clone: Path, tmp_path: Path) -> None:
    # what `pip install tidings-<version>.tar.gz` does: sdist first, wheel from it
    out = tmp_path / "sdist"
    out.mkdir()
    name = run(sys.executable, "-c",
               "import sys; from setuptools import build_meta as b; "
               "print(b.build_sdist(sys.argv[1]))", str(out), cwd=clone).strip().splitlines()[-1]
    sdist = out / name
    with tarfile.open(sdist) as tar:
        shipped = {Path(m).name for m in tar.getnames() if "/client_js/src/" in m}
    assert shipped == set(client_files())
    assert wheel_client(build_wheel(sdist, tmp_path / "wheel")) == client_files()


def test_a_node_installed_from_the_wheel_serves_the_client_from_its_package(
        wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    run(sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
        "--target", str(target), str(wheel), cwd=tmp_path)
    probe = ("import sys, tidings; from tidings.demo_files import CLIENT_SOURCE, demo_file\n"
             "assert tidings.__file__.startswith(sys.argv[1]), tidings.__file__\n"
             "assert not CLIENT_SOURCE.exists(), CLIENT_SOURCE  # no checkout to fall back to\n"
             "sys.stdout.write(demo_file('client/' + sys.argv[2]).decode())")
    env = {**os.environ, "PYTHONPATH": str(target)}
    for name, body in client_files().items():
        served = run(sys.executable, "-c", probe, str(target), name, cwd=tmp_path, env=env)
        assert served.encode() == body, name


# -- the checkout (editable install): served from client_js/src -----------------------


async def get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    """One raw HTTP/1.1 GET (the path sent as is: no client-side normalising)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
                     .encode())
        async with asyncio.timeout(WAIT):
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            headers = {k.lower(): v.strip()
                       for k, _, v in (line.partition(":") for line in lines[1:] if line)}
            body = await reader.readexactly(int(headers["content-length"]))
    finally:
        writer.close()
    return int(lines[0].split()[1]), headers, body


async def test_the_checkout_serves_the_client_from_client_js_src(node: Node) -> None:
    assert not (ROOT / "server" / "tidings" / "static" / "client").exists()
    port = node.app.ws_port
    for name, body in client_files().items():
        status, headers, served = await get(port, f"/client/{name}")
        assert (status, served) == (200, body), name
        assert headers["content-type"].startswith(("application/javascript", "text/javascript"))
    status, _, page = await get(port, "/")
    assert (status, page) == (200, (ROOT / "server/tidings/static/index.html").read_bytes())


@pytest.mark.parametrize("path", [
    "/client/missing.js",
    "/client/",
    "/client/../client_js/src/index.js",
    "/client/../../pyproject.toml",
    "/client/..%2f..%2fpyproject.toml",
    "/client/sub/index.js",
    "/client/.index.js",
    "/client//etc/passwd",
])
async def test_nothing_but_the_client_files_is_served_from_the_checkout(
        node: Node, path: str) -> None:
    status, _, body = await get(node.app.ws_port, path)
    assert status == 404, (path, body[:80])
