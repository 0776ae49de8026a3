"""Publishing against a Hub double: a local HTTP server speaking the Hub's upload protocol (see hub_double.py).

``huggingface_hub`` runs unchanged, pointed at the double by ``HF_ENDPOINT`` with a fake token; the tests check
what arrived (paths and bytes) and that ``load_dataset`` of the uploaded layout gives the rows back. Large
files go through git LFS (``HF_HUB_DISABLE_XET=1``); the Xet storage path of ``huggingface_hub`` is not
exercised here.
"""

import logging
import re
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest

from charattr_hf.api import annotate_to_disk
from charattr_hf.hub import push_dataset
from charattr_hf.pipeline import PipelineOptions

from .hub_double import HubDouble
from .test_pipeline import image_dataset

TOKEN = "hf_fake_token_for_the_double_0123456789"


@pytest.fixture()
def hub(monkeypatch):
    import huggingface_hub.constants as constants

    double = HubDouble(TOKEN).start()
    monkeypatch.setenv("HF_ENDPOINT", double.endpoint)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    # huggingface_hub reads these environment variables once, at import: apply them to the imported module too
    monkeypatch.setattr(constants, "ENDPOINT", double.endpoint)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    # the double speaks the git LFS upload protocol, not Xet storage's (a separate content-addressed service):
    # HF_HUB_DISABLE_XET is the client's documented switch to LFS uploads
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    yield double
    double.stop()


def write_tree(files: dict[str, bytes], folder: Path) -> Path:
    for rel, data in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return folder


@pytest.fixture(scope="module")
def annotated(tiny_clip_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("annotated") / "out"
    ds = image_dataset(14, bad=(5,))
    result, _ = annotate_to_disk(ds, out, options=PipelineOptions(model=f"local-dir:{tiny_clip_dir}", use_cache=False),
                                 chunk_size=5, max_shard_rows=10, progress=False)
    assert result.complete and len(result.data_files) == 2
    return out


def test_push_dataset_uploads_the_layout_and_load_dataset_reads_it_back(hub, annotated, tmp_path, caplog, capsys):
    with caplog.at_level(logging.DEBUG):
        url = push_dataset(annotated, "someone/characters")
    assert url.startswith(hub.endpoint) and url.endswith("datasets/someone/characters")
    files = hub.files("dataset", "someone/characters")
    local = {p.relative_to(annotated).as_posix(): p.read_bytes()
             for p in annotated.rglob("*") if p.is_file() and ".charattr" not in p.parts}
    expected = {p for p in local if p.startswith(("data/", "images/")) or p in ("README.md", "summary.json")}
    assert {"data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet", "README.md",
            "images/train-labels.png", "images/train-confidence.png", "images/train-agreement.png"} <= expected
    assert set(files) - {".gitattributes"} == expected  # nothing else (no work files, no run_info)
    for path in expected:
        assert files[path] == local[path], path
    # the Parquet shards went through the LFS protocol (batch, upload, verify), the card as a regular file
    commit = hub.commits("dataset", "someone/characters")[-1]
    kinds = {op["value"]["path"]: op["key"] for op in commit["operations"]}
    assert kinds["data/train-00000-of-00002.parquet"] == "lfsFile" and kinds["README.md"] == "file"
    assert kinds["images/train-labels.png"] == "lfsFile"
    # the card's example names the repository, and the Hub accepted its YAML header
    assert 'load_dataset("someone/characters", split="train")' in files["README.md"].decode()
    assert hub.validated and "task_categories" in hub.validated[-1]
    assert ("POST", "/datasets/someone/characters.git/info/lfs/objects/batch") in hub.requests
    # the token was sent (the double checks it) and never printed
    out = capsys.readouterr()
    assert TOKEN not in caplog.text and TOKEN not in out.out + out.err

    # the uploaded layout, read back: the plain parquet builder and the card's configs give the same rows
    repo = write_tree(files, tmp_path / "clone")
    shards = sorted(str(p) for p in (repo / "data").glob("train-*.parquet"))
    plain = datasets.load_dataset("parquet", data_files={"train": shards}, split="train")
    original = pq.read_table([str(p) for p in sorted((annotated / "data").glob("*.parquet"))][0])
    assert len(plain) == 14 and plain["index"] == list(range(14))
    assert plain["sha256"][:10] == original.column("sha256").to_pylist()
    by_card = datasets.load_dataset(str(repo), split="train")
    assert by_card.features == plain.features and by_card["hair_color"] == plain["hair_color"]
    assert isinstance(by_card.features["hair_color"], datasets.ClassLabel)


def test_a_second_push_replaces_the_split_and_keeps_others(hub, annotated, tmp_path):
    # first a folder with a one-shard train split and a test split...
    other = tmp_path / "other"
    (other / "data").mkdir(parents=True)
    (other / "README.md").write_text((annotated / "README.md").read_text())
    table = pq.read_table(str(annotated / "data" / "train-00000-of-00002.parquet"))
    pq.write_table(table, other / "data" / "train-00000-of-00001.parquet")
    pq.write_table(table.slice(0, 3), other / "data" / "test-00000-of-00001.parquet")
    push_dataset(other, "someone/characters")
    # ...then the two-shard train split: the old train shard goes, the test split stays
    push_dataset(annotated, "someone/characters")
    files = hub.files("dataset", "someone/characters")
    assert sorted(p for p in files if p.startswith("data/")) == [
        "data/test-00000-of-00001.parquet", "data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet"]
    assert files["data/test-00000-of-00001.parquet"] == (other / "data" / "test-00000-of-00001.parquet").read_bytes()
    assert len(hub.commits("dataset", "someone/characters")) == 2


def test_a_wrong_token_is_refused(hub, annotated, monkeypatch):
    from huggingface_hub.errors import HfHubHTTPError

    monkeypatch.setenv("HF_TOKEN", "hf_not_the_right_one")
    with pytest.raises(HfHubHTTPError):
        push_dataset(annotated, "someone/characters")
    assert ("dataset", "someone/characters") not in hub.repos


def test_fusion_policy_push_to_hub(hub, tmp_path):
    import torch

    from charattr_hf.models.fusion import CharattrFusionModel

    policy = small_policy()
    info = policy.push_to_hub("someone/fusion-policy", commit_message="first policy")
    files = hub.files("model", "someone/fusion-policy")
    assert {"config.json", "model.safetensors", "README.md"} <= set(files)
    local = tmp_path / "saved"
    policy.save_pretrained(local, model_card_id="someone/fusion-policy")
    assert files["model.safetensors"] == (local / "model.safetensors").read_bytes()
    assert files["README.md"] == (local / "README.md").read_bytes()
    assert "someone/fusion-policy" in files["README.md"].decode()
    assert hub.commits("model", "someone/fusion-policy")[-1]["summary"] == "first policy"
    assert info.oid == hub.commits("model", "someone/fusion-policy")[-1]["oid"]
    # what was uploaded loads back into the same policy
    clone = write_tree(files, tmp_path / "clone")
    loaded = CharattrFusionModel.from_pretrained(clone)
    for (name, a), (_, b) in zip(policy.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name

    # to a branch: created, and main left as it was
    policy.push_to_hub("someone/fusion-policy", revision="v2")
    assert set(hub.repos[("model", "someone/fusion-policy")]["branches"]) == {"main", "v2"}
    assert len(hub.commits("model", "someone/fusion-policy", "v2")) == 2
    assert len(hub.commits("model", "someone/fusion-policy")) == 1


def small_policy():
    import torch

    from charattr_hf.models.fusion import CharattrFusionConfig, CharattrFusionModel
    from charattr_hf.schema import load_schema

    config = CharattrFusionConfig.from_schema(load_schema("default"), sources=["clip", "tags"], hidden_size=8)
    torch.manual_seed(0)
    return CharattrFusionModel(config).eval()


@pytest.mark.slow  # subprocess launches: in the fuller run (.ci/run), to keep the default run short
def test_annotate_recipe_publishes_with_push_to_hub(hub, tiny_clip_dir, tmp_path):
    """The user's path: `recipes/annotate.py --push_to_hub`, a subprocess pointed at the double by HF_ENDPOINT."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "out"
    args = ["--sample_size", "12", "--model", f"local-dir:{tiny_clip_dir}", "--schema", "synthetic",
            "--output_dir", str(out), "--no_cache", "--quiet", "--push_to_hub", "someone/sample",
            "--keep_images"]
    env = {**os.environ, "PYTHONPATH": str(root)}  # HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE=0 set by the fixture
    proc = subprocess.run([sys.executable, str(root / "recipes" / "annotate.py"), *args], capture_output=True,
                          text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert TOKEN not in proc.stdout + proc.stderr
    assert f"published: {hub.endpoint}/datasets/someone/sample" in proc.stdout
    files = hub.files("dataset", "someone/sample")
    assert files["data/train-00000-of-00001.parquet"] == (out / "data" / "train-00000-of-00001.parquet").read_bytes()
    pictures = sorted(p for p in files if p.startswith("images/"))
    assert "images/train-labels.png" in pictures and "images/train-samples-hair_color.png" in pictures
    card = files["README.md"].decode()
    for rel in re.findall(r"\]\((images/[^)]+)\)", card):
        assert rel in files, rel  # every picture the card shows was uploaded
    assert "accelerate launch recipes/annotate.py --sample_size 12" in card  # the command that made it
    rows = datasets.load_dataset("parquet", data_files={"train": str(write_tree(files, tmp_path / "clone")
                                                                  / "data" / "train-*.parquet")}, split="train")
    assert len(rows) == 12 and rows["index"] == list(range(12))
