"""The package's top-level API: what its docstring promises runs as written (with a tiny budget)."""
import re

import replay_overshooting


def test_top_level_names_are_the_documented_ones():
    assert set(replay_overshooting.__all__) <= set(dir(replay_overshooting))
    for module in ("ekf", "models", "objectives", "data", "training", "evaluation", "reproduce"):
        assert f"`{module}`" in replay_overshooting.__doc__, module


def test_docstring_example_runs(tmp_path, monkeypatch):
    example = replay_overshooting.__doc__.split("A first run:")[1]
    code = "\n".join(line[4:] for line in example.splitlines() if line.startswith("    "))
    tiny = code.replace('max_iterations=300', 'max_iterations=3, batch_size=4, '
                        'dataset_options={"num_sequences": 8, "seq_len": 46, "cache": False}')
    assert tiny != code and re.search(r"^from replay_overshooting import", code)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(tiny, "replay_overshooting.__doc__", "exec"), namespace)
    assert (tmp_path / "runs" / "sro_example" / "model.pt").is_file()
    assert (tmp_path / "runs" / "sro_example" / "evaluation.md").is_file()
