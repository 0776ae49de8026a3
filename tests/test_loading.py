"""One model-resolution path for every model kind (#17, #18): a Hub id -> the commit (asked of the Hub API) -> only the
files the model reads (never pickled weights) -> a fingerprint; an unreachable Hub or an uncached model offline is one
line, after one attempt. The Hub is the local double of tests/hub_double.py (real ``huggingface_hub`` code), or a
port where nothing answers."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from charattr_hf import loading
from charattr_hf.errors import ModelLoadError
from charattr_hf.loading import ModelRef, resolve_model

from .hub_double import HubDouble

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "hf_fake_token_for_the_double_0123456789"
UNREACHABLE = "the Hugging Face Hub cannot be reached and it is not in the local cache"


def _online(monkeypatch, endpoint: str) -> None:
    """Hub calls go to ``endpoint``, with HF_HUB_OFFLINE off (huggingface_hub reads both at import: patched there)."""
    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")  # the double serves plain HTTP downloads, not Xet storage
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    loading._resolve.cache_clear()  # as a new process: nothing resolved yet


@pytest.fixture()
def hub(monkeypatch, tmp_path):
    import huggingface_hub.constants as constants

    double = HubDouble(TOKEN).start()
    _online(monkeypatch, double.endpoint)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    yield double
    double.stop()
    loading._resolve.cache_clear()


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def _downloads(hub: HubDouble) -> list[str]:
    return [path for method, path in hub.requests if "/resolve/" in path]


def test_a_hub_clip_model_is_pinned_and_only_its_safetensors_are_fetched(hub, tiny_clip_dir):
    from charattr_hf.sources.clip.model import ClipSpec

    files = _files(tiny_clip_dir)
    files["open_clip_pytorch_model.bin"] = b"a pickle: never fetched"
    files["README.md"] = b"# card"
    commit = hub.add_model("org/clip", files)
    spec = ClipSpec.parse("hf-hub:org/clip")
    assert spec.fingerprint() == f"hub-org/clip@{commit}"
    folder = spec.local_dir()
    assert folder.name == commit and (folder / "open_clip_model.safetensors").is_file()
    fetched = _downloads(hub)
    assert fetched and not any(p.endswith((".bin", "README.md")) for p in fetched), fetched
    assert sum("/api/models/org/clip" in p for _, p in hub.requests) == 1  # the commit: asked once
    # the same model through the pipeline's loader: weights from safetensors, the commit in the card's model table
    from charattr_hf.sources.clip.model import load_model

    model, _ = load_model(spec, "cpu", "fp32")
    assert model is not None


def test_a_hub_tagger_is_fetched_at_the_commit_with_three_files(hub, tmp_path):
    from charattr_hf.sources.tagger.stage import TaggerSpec, TaggerStage
    from charattr_hf.testing import build_tiny_tagger

    folder = build_tiny_tagger(tmp_path / "t", [("general", 9), ("1girl", 0)], {"general": 3.0}, image_size=32)
    files = _files(folder)
    files["model.onnx"] = b"the same weights for onnxruntime: not read"
    commit = hub.add_model("SmilingWolf/wd-tiny", files)
    spec = TaggerSpec.parse("SmilingWolf/wd-tiny", revision="main")
    assert spec.fingerprint() == f"hub-SmilingWolf/wd-tiny@{commit}"
    assert sorted({p.rsplit("/", 1)[-1] for p in _downloads(hub)}) == ["config.json", "model.safetensors",
                                                                        "selected_tags.csv"]
    assert all(f"/resolve/{commit}/" in p for p in _downloads(hub))  # at the commit, not at a moving branch
    stage = TaggerStage("default", spec, device="cpu")
    assert stage.model_fingerprint == spec.fingerprint()


def test_pickled_weights_alone_are_refused_without_fetching_them(hub):
    hub.add_model("org/old", {"open_clip_config.json": b"{}", "open_clip_pytorch_model.bin": b"pickle"})
    with pytest.raises(ModelLoadError, match="only pickled weights, which are never loaded"):
        from charattr_hf.sources.clip.model import ClipSpec

        ClipSpec.parse("hf-hub:org/old").fingerprint()
    assert not _downloads(hub)


def test_no_such_repository_is_one_line(hub):
    with pytest.raises(ModelLoadError) as info:
        resolve_model(ModelRef.parse("org/missing", what="tagger", flag="--tagger"), required=("config.json",))
    assert "no such repository on the Hub" in str(info.value) and "\n" not in str(info.value)


def _closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"  # closed again when the test connects: refused


def test_an_unreachable_hub_without_offline_mode_is_one_line_at_once(monkeypatch, tmp_path):
    import huggingface_hub.constants as constants

    _online(monkeypatch, _closed_port())
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    from charattr_hf.sources.clip.model import ClipSpec
    from charattr_hf.sources.tagger.stage import TaggerSpec

    for what, call in (("CLIP model hf-hub:org/clip", lambda: ClipSpec.parse("hf-hub:org/clip").fingerprint()),
                       ("tagger SmilingWolf/wd-vit-tagger-v3",
                        lambda: TaggerSpec.parse("SmilingWolf/wd-vit-tagger-v3").fingerprint())):
        start = time.perf_counter()
        with pytest.raises(ModelLoadError) as info:
            call()
        message = str(info.value)
        assert message.startswith(f"cannot load the {what}: {UNREACHABLE}") and "\n" not in message, message
        assert "HF_HUB_OFFLINE=1" in message  # what to do on a machine without network
        assert time.perf_counter() - start < loading.HUB_TIMEOUT_S  # no retries, no waiting for a refused connection


def test_a_hub_that_does_not_answer_is_asked_once(monkeypatch, tmp_path):
    """A firewall that swallows packets: one request for the commit, given up after the timeout, no file asked for
    (the old path asked for each weights file in turn, a pickle among them, each retried with back-off)."""
    import huggingface_hub.constants as constants

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    requests: list[str] = []

    def swallow():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.settimeout(5)
            try:
                line = conn.recv(4096).split(b"\r\n", 1)[0].decode(errors="replace")
            except OSError:
                line = ""
            requests.append(line)  # never answered

    threading.Thread(target=swallow, daemon=True).start()
    _online(monkeypatch, f"http://127.0.0.1:{server.getsockname()[1]}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setattr(loading, "HUB_TIMEOUT_S", 1.0)
    try:
        with pytest.raises(ModelLoadError, match=UNREACHABLE):
            resolve_model(ModelRef.parse("org/clip", what="CLIP model", flag="--model"),
                          required=("open_clip_config.json", ("open_clip_model.safetensors", "model.safetensors")))
    finally:
        server.close()
    ours = [r for r in requests if "/api/models/org/clip" in r]
    assert len(ours) == 1 and not any("/resolve/" in r for r in requests), requests


def test_recipe_tagger_offline_and_uncached_is_one_line(tmp_path):
    """#17: `--tagger <Hub id>` with HF_HUB_OFFLINE=1 and nothing cached: the same one line as CLIP's, exit status 2
    (not a LocalEntryNotFoundError advising HF_HUB_OFFLINE=0)."""
    import os

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "recipes" / "annotate.py"), "--model", "", "--tagger",
                           "SmilingWolf/wd-vit-tagger-v3", "--limit", "4", "--output_dir", str(tmp_path / "out"),
                           "--quiet"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert errors == [
        "annotate.py: error: cannot load the tagger SmilingWolf/wd-vit-tagger-v3: it is not in the local cache and "
        "HF_HUB_OFFLINE=1; download it once on a machine with network (the same HF_HOME), or give a local folder "
        "instead"
    ], proc.stderr[-3000:]
    assert "HF_HUB_OFFLINE=0" not in proc.stderr and "Traceback" not in proc.stderr


def test_a_model_retrained_into_the_same_folder_gets_a_new_fingerprint(tmp_path):
    """A local folder is fingerprinted by its files' contents each time it is resolved: weights written again into
    the same folder (a notebook retraining a model) must not keep the earlier fingerprint, or finished chunks and
    cached outputs of the old weights would be reused."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights one")
    (folder / "config.json").write_text("{}")
    ref = ModelRef.parse(f"local-dir:{folder}", what="test model", flag="--model")
    first = resolve_model(ref, required=["model.safetensors"], optional=["*.json"]).fingerprint
    assert resolve_model(ref, required=["model.safetensors"], optional=["*.json"]).fingerprint == first
    (folder / "model.safetensors").write_bytes(b"weights two, longer")
    second = resolve_model(ref, required=["model.safetensors"], optional=["*.json"]).fingerprint
    assert second != first and second.startswith("dir-")
    (folder / "extra.json").write_text("{}")  # a new file the model reads
    assert resolve_model(ref, required=["model.safetensors"], optional=["*.json"]).fingerprint not in (first, second)
