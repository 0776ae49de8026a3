"""The README's examples that run offline do run, and say what they claim."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_python_api_example_runs_offline(tmp_path, monkeypatch):
    section = README.read_text().split("### Python", 1)[1]
    block = _python_blocks(section)[0]
    # the paragraphs on the synthetic sample with the shipped model run here; the one on "path/to/images" needs a
    # real image folder and a download
    paragraphs = block.split("\n\n")
    offline = "\n\n".join(p for p in paragraphs if "path/to/" not in p)
    assert "annotate(sample" in offline and len(offline) < len(block)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(offline, str(README), "exec"), namespace)
    ds = namespace["ds"]
    assert ds.num_rows == 32 and ds["id"] == namespace["sample"]["id"]
    names = ds.features["hair_color"].names
    assert out.getvalue().startswith(str(names))
    assert all(0.0 <= c <= 1.0 for c in ds["hair_color_confidence"])


def test_reading_example_matches_the_recipe_output_layout(tmp_path, monkeypatch):
    from charattr_hf import annotate, synthetic

    annotate(synthetic.generate(8, seed=1), output_dir=str(tmp_path / "outputs" / "annotated"), model="demo")
    block = _python_blocks(README.read_text())[0]
    assert 'load_dataset("outputs/annotated", split="train")' in block
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block, str(README), "exec"), namespace)
    assert namespace["ds"].num_rows == 8


def test_adding_a_source_example_runs(tmp_path, monkeypatch):
    """The 'Adding a source' module, saved as my_sources.py, is found by --plugins-style import and annotates."""
    from charattr_hf import annotate, synthetic
    from charattr_hf.sources import load_plugins

    section = README.read_text().split("### Adding a source", 1)[1]
    (tmp_path / "my_sources.py").write_text(_python_blocks(section)[0])
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.path", list(__import__("sys").path))
    load_plugins("my_sources")
    ds = annotate(synthetic.generate(8, seed=2), sources="clip,bright", model="demo", use_cache=False, progress=False)
    probs = ds["probs_bright"]
    assert all(len(p["hair_color"]) == ds.features["probs_bright"]["hair_color"].length for p in probs)
    assert abs(sum(probs[0]["hair_color"]) - 1.0) < 1e-5
