"""README.md is the home page notebook `nbs/index.ipynb` (its markdown cells, in order), kept in step by this test.

Edit the notebook, then `python tests/test_readme.py` writes README.md from it."""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INDEX = ROOT / "nbs" / "index.ipynb"


def readme_from_index() -> str:
    cells = json.loads(INDEX.read_text())["cells"]
    return "".join("".join(cell["source"]) for cell in cells if cell["cell_type"] == "markdown") + "\n"


def test_readme_is_the_index_notebook():
    assert (ROOT / "README.md").read_text() == readme_from_index(), (
        "README.md and nbs/index.ipynb differ: edit the notebook, then run `python tests/test_readme.py`")


def test_readme_starts_with_the_two_setup_commands():
    blocks = readme_from_index().split("```bash\n")[1:3]
    main_job, tests = (block.split("\n```")[0] for block in blocks)
    assert main_job.startswith('pip install -e ".[dev]" && papermill nbs/train.ipynb')
    assert tests.startswith('pip install -e ".[dev]" && ') and "pytest" in tests and "nbdev_test" in tests


if __name__ == "__main__":
    (ROOT / "README.md").write_text(readme_from_index())
    sys.exit(0)
