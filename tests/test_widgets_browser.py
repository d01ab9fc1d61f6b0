"""The forecast viewer in a real browser: JupyterLab on localhost, driven by headless Chromium through Playwright.

The test opens a copy of `nbs/tutorial_own_data.ipynb`, runs all its cells, moves the filter-points slider of
`interactive_forecast` with the keyboard, and checks that the slider's value and the figure changed and that no
cell raised. Screenshots before and after go to `test-artifacts/browser/` (or `$REPLAY_OVERSHOOTING_ARTIFACTS`).

It needs Debian's `chromium` (`.ci/run` installs it) and the `playwright` package (a dev extra); without them it
is skipped, saying which is missing. Chromium runs with the flags that keep it off the network: it resolves no
host but localhost, and its background services (updates, sync, metrics, translation) are off."""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
NOTEBOOK = "tutorial_own_data.ipynb"
OFFLINE_FLAGS = [
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-default-apps",
    "--disable-features=Translate,OptimizationHints,MediaRouter,AutofillServerCommunication",
    "--metrics-recording-only", "--no-first-run", "--no-default-browser-check", "--no-sandbox",
]

playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright (a dev extra) to run it")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                                                               "(apt-get install -y chromium; .ci/run does)")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def jupyterlab(tmp_path):
    "A JupyterLab server on localhost serving a copy of the tutorial; yields (base URL, token, folder)."
    shutil.copy(ROOT / "nbs" / NOTEBOOK, tmp_path / NOTEBOOK)
    port, token = _free_port(), "replay-overshooting-browser-test"
    # JupyterLab finds the widget manager's front-end in the Jupyter data folders of the interpreter that has its
    # package: in a venv that reuses the base interpreter's packages, those of the base
    data = [str(Path(prefix) / "share" / "jupyter") for prefix in dict.fromkeys((sys.prefix, sys.base_prefix))]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "JUPYTER_CONFIG_DIR": str(tmp_path / ".jupyter"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / ".runtime"),
           "JUPYTER_PATH": os.pathsep.join(filter(None, [os.environ.get("JUPYTER_PATH"), *data]))}
    as_root = ["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={tmp_path}",
         "--LabApp.expose_app_in_browser=True", *as_root],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=1)
                break
            except OSError:
                if server.poll() is not None:
                    raise RuntimeError(f"JupyterLab exited: {server.stdout.read()[-3000:]}")
                time.sleep(0.5)
        else:
            raise RuntimeError("JupyterLab did not answer within 60 s")
        yield url, token, tmp_path
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def _artifacts() -> Path:
    folder = Path(os.environ.get("REPLAY_OVERSHOOTING_ARTIFACTS", ROOT / "test-artifacts")) / "browser"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _run(page, command: str) -> None:
    page.evaluate("command => window.jupyterapp.commands.execute(command)", command)


def test_moving_the_filter_slider_redraws_the_forecast(jupyterlab):
    url, token, folder = jupyterlab
    artifacts = _artifacts()
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=str(CHROMIUM), args=OFFLINE_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{url}/lab/tree/{NOTEBOOK}?token={token}")
        page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
                               " && window.jupyterapp.shell.currentWidget.sessionContext"
                               " && window.jupyterapp.shell.currentWidget.sessionContext.session"
                               " && window.jupyterapp.shell.currentWidget.sessionContext.session.kernel",
                               timeout=120_000)
        _run(page, "notebook:run-all-cells")
        page.wait_for_function(
            "() => { const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')];"
            " return prompts.length > 0 && prompts.every(p => /\\[\\d+\\]/.test(p.textContent)); }",
            timeout=600_000)
        slider = page.locator(".widget-slider", has=page.locator(".widget-label", has_text="filter F"))
        try:
            slider.wait_for(timeout=60_000)
        except playwright.Error:
            page.screenshot(path=str(artifacts / "no_slider.png"), full_page=True)
            raise AssertionError("no 'filter F' slider was rendered (the widget manager's front-end missing, or the "
                                 f"viewer fell back to its static figure); see {artifacts / 'no_slider.png'}")
        viewer = page.locator(".jp-OutputArea-output", has=slider).last
        viewer.scroll_into_view_if_needed()
        figure = viewer.locator("img")
        figure.first.wait_for(timeout=120_000)
        before = figure.first.get_attribute("src")
        readout = slider.locator(".widget-readout")
        first_value = readout.inner_text()
        page.screenshot(path=str(artifacts / "before.png"), full_page=False)
        slider.locator(".noUi-handle").focus()
        for _ in range(5):
            page.keyboard.press("ArrowRight")
        page.wait_for_function("([element, old]) => element.textContent.trim() !== old",
                               arg=[readout.element_handle(), first_value], timeout=30_000)
        deadline = time.monotonic() + 120
        while figure.first.get_attribute("src") == before:  # the widget replaces its output: re-query each time
            assert time.monotonic() < deadline, "the figure was not redrawn within 120 s of moving the slider"
            page.wait_for_timeout(500)
        page.wait_for_timeout(3000)  # the five key presses redraw five times; let the last one land
        page.screenshot(path=str(artifacts / "after.png"), full_page=False)
        assert int(readout.inner_text()) == int(first_value) + 5
        _run(page, "docmanager:save")
        page.wait_for_timeout(2000)
        browser.close()
    saved = json.loads((folder / NOTEBOOK).read_text())
    errors = [output for cell in saved["cells"] if cell["cell_type"] == "code" for output in cell.get("outputs", [])
              if output.get("output_type") == "error"]
    assert not errors, [f"{e['ename']}: {e['evalue']}" for e in errors]
    assert all(cell.get("execution_count") for cell in saved["cells"] if cell["cell_type"] == "code")
