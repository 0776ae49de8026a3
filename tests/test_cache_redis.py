"""The feature cache in Redis, against a real redis-server started on a free local port."""

import logging
import shutil
import socket
import threading

import numpy as np
import pyarrow.parquet as pq
import pytest

from charattr_hf.api import annotate_to_disk
from charattr_hf.cache_redis import RedisFeatureCache, check_cache_url
from charattr_hf.errors import UserError
from charattr_hf.pipeline import PipelineOptions
from charattr_hf.sources.clip.stage import ClipZeroShot

from .redis_server import RedisServer
from .test_pipeline import image_dataset

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")


@pytest.fixture()
def redis_server(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def stats(server) -> tuple[int, int]:
    info = server.client().info("stats")
    return info["keyspace_hits"], info["keyspace_misses"]


def read(files) -> dict:
    return pq.read_table([str(f) for f in files][0]).to_pydict()


def test_rerun_reads_model_outputs_from_redis(tiny_clip_dir, tmp_path, redis_server, monkeypatch):
    ds = image_dataset(12, bad=(4,), duplicate_of={7: 2})  # 10 distinct readable images
    opts = PipelineOptions(model=f"local-dir:{tiny_clip_dir}", cache_dir=str(tmp_path / "local"),
                           cache_url=redis_server.url)
    first, pipeline = annotate_to_disk(ds, tmp_path / "a", options=opts, chunk_size=5, progress=False)
    assert first.complete
    client = redis_server.client()
    keys = sorted(k.decode() for k in client.keys("charattr:*"))
    namespace = pipeline.device[0].cache.namespace
    assert len(keys) == 10 and all(k.startswith(f"charattr:{namespace}:") for k in keys)
    assert {k.rsplit(":", 1)[1] for k in keys} == {s for s, e in zip(read(first.data_files)["sha256"],
                                                                     read(first.data_files)["error"]) if not e}
    # no SQLite feature file was written: Redis replaced it (label embeddings stay local)
    assert not list((tmp_path / "local").rglob("*.sqlite"))

    hits0, _ = stats(redis_server)
    forwards = []
    real = ClipZeroShot._forward
    monkeypatch.setattr(ClipZeroShot, "_forward", lambda self, blobs: forwards.append(len(blobs)) or real(self, blobs))
    second, _ = annotate_to_disk(ds, tmp_path / "b", options=opts, chunk_size=5, progress=False)
    hits1, _ = stats(redis_server)
    assert second.complete and forwards == []  # every image came from Redis
    assert hits1 - hits0 == 11  # readable rows, chunk by chunk (the duplicate is in another chunk)
    a, b = read(first.data_files), read(second.data_files)
    for x, y in zip(a["probs_clip"], b["probs_clip"]):
        if x is None:
            assert y is None
            continue
        np.testing.assert_allclose(x["hair_color"], y["hair_color"], rtol=1e-6)
    assert a["hair_color"] == b["hair_color"]


def test_a_dead_server_does_not_fail_the_run(tiny_clip_dir, tmp_path, redis_server, caplog):
    ds = image_dataset(9)
    base = dict(model=f"local-dir:{tiny_clip_dir}", cache_dir=str(tmp_path / "local"))
    reference, _ = annotate_to_disk(ds, tmp_path / "ref", options=PipelineOptions(**base, use_cache=False),
                                    chunk_size=3, progress=False)
    redis_server.stop()  # a server that was there and is gone
    with caplog.at_level(logging.WARNING, logger="charattr_hf.cache_redis"):
        result, _ = annotate_to_disk(ds, tmp_path / "out", options=PipelineOptions(**base, cache_url=redis_server.url),
                                     chunk_size=3, progress=False)
    assert result.complete and result.rows_processed == 9
    warnings = [r for r in caplog.records if r.name == "charattr_hf.cache_redis"]
    assert len(warnings) == 1 and "continuing without the cache" in warnings[0].getMessage()
    assert read(result.data_files)["hair_color"] == read(reference.data_files)["hair_color"]


def test_a_server_that_never_answers_times_out_and_is_skipped(tmp_path, caplog):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted = []
    stop = threading.Event()

    def accept():  # accept connections and never reply
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        port = listener.getsockname()[1]
        cache = RedisFeatureCache(f"redis://127.0.0.1:{port}/0?socket_timeout=0.3", "ns", tmp_path)
        with caplog.at_level(logging.WARNING, logger="charattr_hf.cache_redis"):
            assert cache.get_many(["a", "b"]) == {}
            assert cache.disabled
            cache.put_many({"a": b"1"})  # skipped at once while disabled
            assert cache.get_many(["a"]) == {}
        assert len([r for r in caplog.records if "failed" in r.getMessage()]) == 1
        assert accepted  # it did try the server
    finally:
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()
        listener.close()


def test_cache_round_trip_pickles_and_batches(tmp_path, redis_server):
    import pickle

    cache = RedisFeatureCache(redis_server.url, "ns1", tmp_path)
    items = {f"{i:064x}": bytes([i % 256]) * 10 for i in range(1200)}  # more than one pipelined batch
    cache.put_many(items)
    clone = pickle.loads(pickle.dumps(cache))
    got = clone.get_many([*items, "missing"])
    assert got == items and len(clone) == 1200
    assert RedisFeatureCache(redis_server.url, "ns2", tmp_path).get_many(list(items)[:5]) == {}  # namespaces


@pytest.mark.parametrize("url", ["http://localhost:6379", "localhost:6379", "redis://host:notaport/0"])
def test_a_bad_cache_url_is_a_user_error(url):
    with pytest.raises(UserError, match="cache_url"):
        check_cache_url(url)



def test_recipe_reports_a_bad_cache_url_before_work(tmp_path):
    from .test_user_errors import annotate, assert_user_error

    proc, seconds = annotate("--cache_url", "http://localhost:6379", "--output_dir", str(tmp_path / "o"))
    assert_user_error(proc, seconds, "--cache_url", "redis://")
    assert not (tmp_path / "o").exists()
