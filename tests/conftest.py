"""Test set-up: offline always, caches in a temporary folder, tiny models built locally."""

import os
import tempfile

_TMP = tempfile.mkdtemp(prefix="charattr-tests-")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HOME"] = os.path.join(_TMP, "hf")
os.environ["HF_DATASETS_CACHE"] = os.path.join(_TMP, "hf", "datasets")
os.environ["HF_MODULES_CACHE"] = os.path.join(_TMP, "hf", "modules")
os.environ["CHARATTR_CACHE"] = os.path.join(_TMP, "charattr")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from charattr_hf.testing import build_tiny_clip  # noqa: E402


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    """A tiny random open_clip model saved as a local-dir: folder (config JSON + safetensors)."""
    return build_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture()
def cache_dir(tmp_path):
    return tmp_path / "feature-cache"
