"""The documentation site: nbdev processes the notebooks into pages, and every module's public functions and
classes appear on its page with their signature and docstring.

`nbdev_docs` is two steps: nbdev processes the notebooks (`_proc/`: exported code hidden, a `show_doc` for
every exported function and class, run to give its signature, docstring and parameter table), then Quarto
renders `_proc/` to HTML (`_docs/`). The first step is tested here on a copy of the repository. The second
needs the `quarto` command: where it is installed (`pip install quarto-cli`, which downloads Quarto's binaries
from GitHub), the test renders the site and checks a page per module; where it is not, that part is skipped,
saying so. Build the site with `nbdev_docs` from the repository root."""
import importlib
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROCESS = ("from nbdev.quarto import refresh_quarto_yml, nbdev_sidebar\n"
           "from nbdev.serve import proc_nbs\n"
           "refresh_quarto_yml(); nbdev_sidebar.__wrapped__(); proc_nbs(n_workers=2)\n")


def module_pages() -> dict:
    "module name → the notebook it is exported from, for every module of the package."
    pages = {}
    for path in sorted((ROOT / "replay_overshooting").glob("*.py")):
        source = re.search(r"File to edit: \.\./nbs/(\S+\.ipynb)", path.read_text()[:600])
        if source:
            pages[path.stem] = source.group(1)
    return pages


def public_callables(module_name: str) -> list[str]:
    module = importlib.import_module(f"replay_overshooting.{module_name}")
    return [name for name in module.__all__
            if inspect.isfunction(getattr(module, name)) or inspect.isclass(getattr(module, name))]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    "A copy of the repository's tracked files with its notebooks processed for the docs (`_proc/`)."
    copy = tmp_path_factory.mktemp("site")
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, copy / name)
    result = subprocess.run([sys.executable, "-c", PROCESS], cwd=copy, capture_output=True, text=True, timeout=900,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-4000:]
    return copy


def test_every_module_is_exported_from_a_notebook():
    modules = {path.stem for path in (ROOT / "replay_overshooting").glob("*.py")} - {"__init__", "_modidx"}
    assert set(module_pages()) == modules


@pytest.mark.parametrize("module_name", sorted(module_pages()))
def test_each_module_page_documents_its_public_names(site, module_name):
    notebook = json.loads((site / "_proc" / module_pages()[module_name]).read_text())
    rendered = "\n".join("".join(output.get("data", {}).get("text/markdown", ""))
                         for cell in notebook["cells"] for output in cell.get("outputs", []))
    module = importlib.import_module(f"replay_overshooting.{module_name}")
    for name in public_callables(module_name):
        assert f"### {name}\n" in rendered, f"{name} has no show_doc entry on the {module_name} page"
        doc = inspect.getdoc(getattr(module, name))
        if doc:
            assert doc.splitlines()[0].strip("*`") in rendered.replace("*", "").replace("`", "") or \
                doc.splitlines()[0] in rendered, f"the docstring of {name} is not on its page"


@pytest.mark.skipif(shutil.which("quarto") is None,
                    reason="quarto is not installed (pip install quarto-cli downloads it from GitHub)")
def test_quarto_renders_a_page_per_module(site):
    result = subprocess.run(["quarto", "render", "_proc"], cwd=site, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-4000:]
    for module_name in module_pages():
        page = site / "_docs" / f"{module_name}.html"
        assert page.exists(), f"no page for {module_name}"
        text = page.read_text()
        assert all(name in text for name in public_callables(module_name)), module_name
