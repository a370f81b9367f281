"""The documentation site builds (`mkdocs build --strict`, as `make docs`) and its pages render in headless
Chromium: the home page and one API page, served over HTTP on the loopback address, with no request
that fails (a missing page, stylesheet, script or picture) and nothing on the browser console. The
screenshots are taken in the test's folder; with DETKIT_SAVE_SCREENSHOTS=1 they also replace
docs/site_home.png and docs/site_api.png (committed, for people to look at)."""

import http.server
import os
import shutil
import subprocess
import sys
import threading
from functools import partial
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MKDOCS = Path(sys.executable).with_name("mkdocs")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=5000"]
PAGES = {  # page -> (screenshot, text the rendered page must hold)
    "index.html": ("site_home.png", ["Two-stage object detection", "Quick start", "Where to go next"]),
    "api/models.html": ("site_api.png", ["detkit.models", "build_model", "register_model", "num_classes"]),
}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="needs headless Chromium: make browser"),
    pytest.mark.skipif(not MKDOCS.exists(), reason="needs the docs extra: pip install -e '.[docs]'"),
]


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the built site and records every request's path and status."""

    requests: list[tuple[str, int]]

    def log_request(self, code="-", size="-"):
        self.requests.append((self.path, int(code)))

    def log_message(self, format, *args):
        pass


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    build = subprocess.run(
        [str(MKDOCS), "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert build.returncode == 0, build.stderr[-5000:]
    handler = type("Handler", (_Handler,), {"requests": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(out)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield out, f"http://127.0.0.1:{server.server_address[1]}", handler.requests
    server.shutdown()
    server.server_close()


def _chromium(*args: str) -> subprocess.CompletedProcess:
    command = [CHROMIUM, *FLAGS, "--enable-logging=stderr", "--v=0", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)


def _console(stderr: str) -> list[str]:
    """What the page wrote to the browser console (Chromium logs each message as a CONSOLE line)."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


@pytest.mark.parametrize("page", list(PAGES))
def test_page_renders(site, page, tmp_path):
    import cv2

    out, url, requests = site
    shot_name, texts = PAGES[page]
    requests.clear()
    dom = _chromium("--dump-dom", f"{url}/{page}")
    assert not _console(dom.stderr), _console(dom.stderr)
    failed = [(path, code) for path, code in requests if code >= 400]
    assert not failed, f"requests that failed: {failed}"
    assert any(path.endswith(page) for path, _ in requests) and any(p.endswith(".css") for p, _ in requests)
    for text in texts:
        assert text in dom.stdout, f"{page} lacks {text!r}"
    assert 'class="md-nav' in dom.stdout  # the theme rendered its navigation

    shot = tmp_path / shot_name
    run = _chromium(f"--screenshot={shot}", "--window-size=1280,1000", f"{url}/{page}")
    assert not _console(run.stderr), _console(run.stderr)
    picture = cv2.imread(str(shot))
    assert picture.shape[:2] == (1000, 1280) and picture.std() > 10  # not blank
    if os.environ.get("DETKIT_SAVE_SCREENSHOTS") == "1":
        shutil.copyfile(shot, ROOT / "docs" / shot_name)


def test_the_checks_catch_a_missing_file_and_a_script_error(site):
    out, url, requests = site
    broken = (out / "index.html").read_text(encoding="utf-8")
    broken = broken.replace("</body>", '<img src="missing.png"><script>undefinedFunction();</script></body>')
    (out / "broken.html").write_text(broken, encoding="utf-8")
    requests.clear()
    dom = _chromium("--dump-dom", f"{url}/broken.html")
    assert any("undefinedFunction" in line for line in _console(dom.stderr))
    assert ("/missing.png", 404) in requests


def test_an_undocumented_public_name_fails_the_build(tmp_path):
    """docs/hooks.py lists every name of an __all__ without a docstring and stops the build."""
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        import hooks
    finally:
        sys.path.remove(str(ROOT / "docs"))
    assert hooks.undocumented() == []
    package = tmp_path / "undocumented_pkg"
    package.mkdir()
    (package / "__init__.py").write_text(
        '__all__ = ["documented", "bare", "CONSTANT", "NOTED"]\n'
        'def documented():\n    """Has one."""\n'
        "def bare():\n    pass\n"
        "CONSTANT = 3\n"
        'NOTED = 4\n"""The docstring of an attribute."""\n'
    )
    sys.path.insert(0, str(tmp_path))
    try:
        docs = {name: doc for name, _, doc in hooks.api_entries("undocumented_pkg")}
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("undocumented_pkg", None)
    assert docs == {"documented": "Has one.", "bare": None, "CONSTANT": None, "NOTED": "The docstring of an attribute."}
