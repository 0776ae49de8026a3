"""The review app: its data access and feedback log, then the served app driven by ``gradio_client`` and by a real
headless Chromium (playwright). The app runs in this process on a free localhost port with the demo models."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import datasets
import pytest
from datasets import Dataset

from charattr_hf import fusion_training as ft
from charattr_hf import synthetic
from charattr_hf.app.data import AnnotatedStore, Query
from charattr_hf.app.feedback import FEEDBACK_LOG_FEATURES, FeedbackLog, decision_events
from charattr_hf.errors import UserError
from charattr_hf.schema import load_schema

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


# ------------------------------------------------------------------------------------------ data access
@pytest.fixture(scope="module")
def many_groups(tmp_path_factory):
    """A simulated annotated output (typed like the pipeline's) in 3 files of 10 row groups of 40 rows."""
    schema = load_schema("synthetic")
    sim = ft.simulate_annotated(schema, 1200, seed=3, sources=("clip", "tags"), styles=("anime", "sketch"))
    rng = np.random.default_rng(0)
    cols = {}
    for attr in schema:  # fused columns: argmax of the clip source (multi-label: >= threshold), a confidence
        probs = [c[attr.name] for c in sim["probs_clip"]]
        if attr.multi_label:
            cols[attr.name] = [[i for i, p in enumerate(v) if p >= 0.5] for v in probs]
            cols[f"{attr.name}_confidence"] = [[float(v[i]) for i, p in enumerate(v) if p >= 0.5] for v in probs]
        else:
            cols[attr.name] = [int(np.argmax(v)) for v in probs]
            cols[f"{attr.name}_confidence"] = [float(max(v)) for v in probs]
    sha = [f"h{i % 1100}" for i in range(len(sim))]  # rows i and i + 1100 are exact duplicates
    feats = schema.output_features(("clip", "tags"))
    table = {"id": sim["id"], "index": sim["index"], "path": [None] * len(sim), "sha256": sha,
             "error": [None if rng.random() > 0.02 else "broken" for _ in range(len(sim))],
             "flags": sim["flags"], "width": [64] * len(sim), "height": [64] * len(sim), "quality": sim["quality"],
             **cols, "probs_clip": sim["probs_clip"], "probs_tags": sim["probs_tags"]}
    for column in feats:  # output columns of other stages (e.g. curation's signature): null here
        table.setdefault(column, [None] * len(sim))
    ds = Dataset.from_dict(table, features=feats)
    out = tmp_path_factory.mktemp("many") / "annotated"
    (out / "data").mkdir(parents=True)
    arrow = ds.data.table
    for j in range(3):
        part = arrow.slice(j * 400, 400)
        pq.write_table(part, out / "data" / f"train-{j:05d}-of-00003.parquet", row_group_size=40)
    return out, ds


def test_store_filters_match_a_full_scan_and_read_only_what_a_page_needs(many_groups):
    out, ds = many_groups
    store = AnnotatedStore(str(out))
    assert store.num_rows == 1200 and len(store.groups) == 30 and store.sources == ["clip", "tags"]
    assert [a.name for a in store.attributes] == load_schema("synthetic").attribute_names
    full = ds.to_dict()
    hc = store.attribute("hair_color")
    blue = hc.labels.index("blue")
    conf = np.asarray(full["hair_color_confidence"])
    expected = [i for i in range(1200) if full["hair_color"][i] == blue and 0.3 <= conf[i] <= 0.9]
    q = Query("hair_color", "blue", 0.3, 0.9)
    state = store.find(q, 10**9)
    assert state["matches"] == expected and state["done"]
    hats = [i for i in range(1200) if 1 in full["accessories"][i]]  # multi-label: list contains
    assert store.find(Query("accessories", "hat"), 10**9)["matches"] == hats
    flagged = [i for i in range(1200) if "grayscale" in full["flags"][i]]
    assert store.find(Query(flag="grayscale"), 10**9)["matches"] == flagged
    assert store.find(Query(flag="error"), 10**9)["matches"] == [i for i in range(1200) if full["error"][i]]
    assert store.find(Query(duplicates="grouped"), 10**9)["matches"] == [i for i in range(1200) if i % 1100 < 100]
    dis = []
    for i in range(1200):
        c, t = full["probs_clip"][i]["hair_color"], full["probs_tags"][i]["hair_color"]
        if c is not None and t is not None and int(np.argmax(c)) != int(np.argmax(t)):
            dis.append(i)
    assert dis and store.find(Query("hair_color", disagree=True), 10**9)["matches"] == dis
    # paging: the first page of an unselective query reads one row group, not thirty
    rows, st = store.page(Query(flag="any"), 0, 5)
    assert st["scanned"] == 1 and not st["done"] and len(rows) == 5
    got = store.read_rows([1199, 0, 613])
    assert [r["id"] for r in got] == [full["id"][1199], full["id"][0], full["id"][613]]
    with pytest.raises(UserError, match="no label"):
        store.find(Query("hair_color", "plaid"), 10)


def test_feedback_events_and_log_format(tmp_path):
    schema = load_schema("synthetic")
    hc = schema["hair_color"]
    now = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    acc = decision_events(schema, "r1", "hair_color", 2, 0.8, "accept", policy_version="p", now=now)
    assert [(e["action"], e["reward"], e["propensity"]) for e in acc] == [(2, 1.0, pytest.approx(0.8))]
    cor = decision_events(schema, "r1", "hair_color", 2, 0.8, "correct", "blue", now=now)
    assert [(e["action"], e["reward"]) for e in cor] == [(2, 0.0), (hc.index("blue"), 1.0)]
    assert cor[1]["propensity"] == 1.0 and cor[0]["decision_id"] == cor[1]["decision_id"]
    multi = decision_events(schema, "r2", "accessories", 0, 0.5, "correct", ["hat", "scarf"], now=now)
    assert [e["reward"] for e in multi] == [0.0, 1.0, 0.0, 1.0]
    with pytest.raises(UserError, match="verdict"):
        decision_events(schema, "r1", "hair_color", 0, 0.5, "maybe")
    with pytest.raises(UserError, match="needs the right label"):
        decision_events(schema, "r1", "hair_color", 0, 0.5, "correct")
    log = FeedbackLog(tmp_path / "fb.parquet")
    assert log.append(acc) == 1 and log.append(cor + multi) == 7
    read = ft.load_table(str(log.path))  # how recipes/train_fusion.py reads --feedback
    assert read.features == FEEDBACK_LOG_FEATURES and len(read) == 7
    assert read["verdict"] == ["accept", "correct", "correct"] + ["correct"] * 4  # in the order logged
    ft.validate_feedback(read, ft.build_config(schema))
    again = FeedbackLog(log.path)  # reopened: the counts and the decided items come back
    assert len(again) == 7 and again.decided() == {("r1", "hair_color"), ("r2", "accessories")}
    # a log written as one Parquet file (an earlier version of the app, or the simulator with the original
    # columns only) becomes a folder holding it, extended, not rejected
    sim = ft.simulate_feedback(ft.simulate_annotated(schema, 5, seed=1, sources=("clip",)), ft.build_config(schema))
    sim.to_parquet(str(tmp_path / "sim.parquet"))
    old = FeedbackLog(tmp_path / "sim.parquet")
    assert (tmp_path / "sim.parquet").is_dir() and old.append(acc) == len(sim) + 1
    assert len(ft.load_table(str(tmp_path / "sim.parquet"))) == len(sim) + 1
    (tmp_path / "not.parquet").write_bytes(pq_bytes(pa.table({"x": [1]})))
    with pytest.raises(UserError, match="not a feedback log"):
        FeedbackLog(tmp_path / "not.parquet")
    assert (tmp_path / "not.parquet").is_file()  # left as it was
    with pytest.raises(UserError, match=r"\.parquet"):
        FeedbackLog(tmp_path / "fb.csv")


def test_feedback_log_appends_whole_files_and_merges_them(tmp_path):
    """A decision writes one small file whatever the log's size; every 256 of them become one; compaction (before
    a policy is continued) leaves one file; the log reads the same throughout."""
    schema = load_schema("synthetic")
    log = FeedbackLog(tmp_path / "fb.parquet")
    ids = []
    for i in range(600):
        ids.append(f"r{i}")
        log.append(decision_events(schema, f"r{i}", "hair_color", i % 10, 0.9, "accept"))
    files = sorted((tmp_path / "fb.parquet").glob("*.parquet"))
    assert len(files) == 2 + (600 - 512)  # two merged files of 256, then one file per decision
    assert [p.name for p in (tmp_path / "fb.parquet").glob(".*")] == [".lock"]  # no temporary file left behind
    assert log.read_table().column("id").to_pylist() == ids and len(log) == 600
    log.compact()
    assert len(list((tmp_path / "fb.parquet").glob("*.parquet"))) == 1
    assert ft.load_table(str(log.path))["id"] == ids


@pytest.mark.parametrize("fail", ["replace", "unlink"])
def test_a_merge_that_dies_at_any_point_leaves_every_event_once(tmp_path, monkeypatch, fail):
    """A process killed in the middle of a merge (its k-th rename or removal fails, for every k) leaves a log that,
    reopened, holds every event exactly once, and the folder then merges and reads as usual."""
    from charattr_hf.app import feedback as fb

    schema = load_schema("synthetic")
    real = {"replace": os.replace, "unlink": Path.unlink}
    for k in range(8):
        path = tmp_path / f"k{k}" / "fb.parquet"
        log = FeedbackLog(path)
        log._events.merge_every = 4
        for i in range(3):
            log.append(decision_events(schema, f"r{i}", "hair_color", 0, 1.0, "accept"))
        calls = []

        def dies(*args, **kwargs):
            calls.append(args)
            if len(calls) > k:
                raise SystemExit("killed")
            return real[fail](*args, **kwargs)

        if fail == "replace":
            monkeypatch.setattr(fb.os, "replace", dies)
        else:
            monkeypatch.setattr(Path, "unlink", dies)
        try:  # the 4th decision: its file, then the merge of the 4 files
            log.append(decision_events(schema, "r3", "hair_color", 0, 1.0, "accept"))
        except SystemExit:
            pass
        monkeypatch.undo()
        again = FeedbackLog(path)
        table = again.read_table()
        written = fail == "unlink" or k > 0  # the 4th decision's own file was renamed into place
        assert sorted(table.column("id").to_pylist()) == ["r0", "r1", "r2"] + (["r3"] if written else [])
        assert len(set(table.column("decision_id").to_pylist())) == table.num_rows == len(again)
        assert not [p.name for p in path.iterdir() if p.name.startswith(".merg")]  # the interrupted merge is done
        again.append(decision_events(schema, "r4", "hair_color", 0, 1.0, "accept"))
        again.compact()
        assert [p.name for p in path.glob("*.parquet")] and len(list(path.glob("*.parquet"))) == 1
        assert sorted(FeedbackLog(path).read_table().column("id").to_pylist())[-1] == "r4"
        assert FeedbackLog(path).read_table().num_rows == table.num_rows + 1


_WRITER = """
import sys
from charattr_hf.app.feedback import FeedbackLog, decision_events
from charattr_hf.schema import load_schema
schema, name, n = load_schema("synthetic"), sys.argv[2], int(sys.argv[3])
log = FeedbackLog(sys.argv[1])
log._events.merge_every = 3  # merge this process's latest files often
print("ready", flush=True)
sys.stdin.readline()
for i in range(n):
    log.append(decision_events(schema, f"{name}{i}", "hair_color", 0, 1.0, "accept"))
    if i % 5 == 4:
        log.compact()  # as recipes/app.py --retrain does beside the serving app
        log.read_table()
"""


@pytest.mark.slow  # subprocess launches: in the fuller run (.ci/run), to keep the default run short
def test_two_processes_merging_one_log_lose_and_double_nothing(tmp_path):
    """Two real processes append to one log, each merging its own latest files and compacting the whole log while
    the other does the same: every decision of both is in the log exactly once."""
    path = tmp_path / "fb.parquet"
    FeedbackLog(path).append(decision_events(load_schema("synthetic"), "old", "hair_color", 0, 1.0, "accept"))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(path), name, "30"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env) for name in ("a", "b")]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    for p in procs:  # both start together
        p.stdin.write("go\n")
        p.stdin.flush()
    for p in procs:
        assert p.wait(240) == 0
    ids = FeedbackLog(path).read_table().column("id").to_pylist()
    expected = ["old"] + [f"{name}{i}" for name in ("a", "b") for i in range(30)]
    assert sorted(ids) == sorted(expected)


def pq_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


# ------------------------------------------------------------------------------------------ the served app
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DATA = Path(__file__).parent / "data" / "app"  # real images (see LICENSE-NOTES.md there)
README = Path(__file__).parents[1] / "README.md"


def load_recipe(name: str):
    import importlib.util

    path = Path(__file__).parents[1] / "recipes" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_recipe", path)
    recipe = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = recipe  # its dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(recipe)
    return recipe


def at_once(call, timeout: float) -> list:
    """``call()`` from two threads released together: what each returned, or the UserError it raised."""
    barrier, results = threading.Barrier(2), []

    def run():
        barrier.wait()
        try:
            results.append(call())
        except UserError as exc:
            results.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    return results


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The app as ``python recipes/app.py --dataset ... --cache_dir ...`` starts it: the recipe's flags and defaults
    (the demo model, tags, the confidence rule), on a synthetic sample annotated with the same flags."""
    pytest.importorskip("gradio", reason="the app needs gradio: pip install -e '.[app]'")  # installed by [test]
    from charattr_hf.api import annotate_to_disk
    from charattr_hf.app import AppConfig, AppState
    from charattr_hf.app.ui import launch
    from charattr_hf.cli import parse_args
    from charattr_hf.pipeline import PipelineOptions

    root = tmp_path_factory.mktemp("app")
    flags = ["--cache_dir", str(root / "cache")]
    options = parse_args([PipelineOptions], flags)
    sample = synthetic.generate(24, seed=5, size=64, noise="mixed", styles=["flat", "lit", "sketch"])
    annotate_to_disk(sample, root / "annotated", progress=False, num_proc=1,
                     options=dataclasses.replace(options, keep_images=True))
    config = AppConfig(dataset=str(root / "annotated"), feedback_log=str(root / "log" / "feedback.parquet"),
                       pool_size=24, train_epochs=15, train_patience=5, pipeline=options)
    state = AppState(config)
    demo, url = launch(state, port=free_port(), block=False, quiet=True)
    image = root / "character.png"
    image.write_bytes(synthetic.make_item(7, 3, size=512, styles=["flat"])["image"]["bytes"])
    yield {"state": state, "url": url, "root": root, "image": image, "flags": flags}
    demo.close()


def test_app_and_recipe_label_real_images_alike(served, tmp_path):
    """The same flags give the same pipeline: the recipe's row and the app's /annotate agree on every label and
    confidence of a real illustration (with its tags beside it) and a real photo (without). (Before any test here
    continues the policy: the app then annotates with the new policy.)"""
    from gradio_client import Client, handle_file

    images = tmp_path / "my_images"
    images.mkdir()
    shutil.copy(DATA / "sdeval-1.jpg", images / "sdeval-1.jpg")
    tags = "1girl, solo, long_hair, white_hair, red_eyes, dress, smile"
    (images / "sdeval-1.txt").write_text(tags)
    shutil.copy(DATA / "ukbench09012.jpg", images / "ukbench09012.jpg")
    out = tmp_path / "annotated"
    assert load_recipe("annotate").main([*served["flags"], "--dataset", str(images), "--output_dir", str(out),
                                         "--quiet", "--num_proc", "1"]) == 0
    run_info = json.loads((out / "run_info.json").read_text())
    rows = {r["id"]: r for r in datasets.load_dataset(str(out), split="train")}
    client = Client(served["url"], verbose=False)
    schema = served["state"].schema
    for name, given in (("sdeval-1.jpg", tags), ("ukbench09012.jpg", None)):
        row = rows[name]
        app = client.predict(image=handle_file(str(images / name)), tags=given, api_name="/annotate")
        assert app["_image"]["fusion"] == "simple-confidence" and app["_image"]["flags"] == row["flags"]
        for attr in schema:
            entry = app[attr.name]
            if attr.multi_label:
                assert entry["label"] == [attr.labels[i].name for i in row[attr.name]], attr.name
                assert entry["confidence"] == pytest.approx(row[f"{attr.name}_confidence"], abs=1e-4)
            else:
                assert entry["label"] == attr.labels[row[attr.name]].name, attr.name
                assert entry["confidence"] == pytest.approx(row[f"{attr.name}_confidence"], abs=1e-4), attr.name
        tagged = (row["probs_tags"] or {}).get("hair_color") is not None  # the recipe read the .txt beside it
        assert tagged == (app["hair_color"]["sources"]["tags"] is not None) == (given is not None)
        assert app["_image"]["warnings"] == run_info["warnings"] and run_info["warnings"]  # the demo model's


def test_every_endpoint_as_the_readme_calls_it(served, tmp_path):
    """The README's API example runs as written (only the address and the image file replaced), every parameter has
    its name, and the optional ones may be left out."""
    from gradio_client import Client

    state = served["state"]
    api = Client(served["url"], verbose=False).view_api(print_info=False, return_format="dict")["named_endpoints"]
    params = {name: [(p["parameter_name"], p["parameter_has_default"]) for p in info["parameters"]]
              for name, info in api.items()}
    assert params == {
        "/annotate": [("image", False), ("tags", True)],
        "/review_next": [("n", True)],
        "/review_decide": [("token", False), ("verdict", False), ("label", True)],
        "/annotate_feedback": [("upload_id", False), ("attribute", False), ("verdict", False), ("label", True)],
        "/retrain": [],
        "/status": [],
    }

    section = README.read_text().split("The same actions are API endpoints", 1)[1]
    block = re.findall(r"```python\n(.*?)```", section, flags=re.S)[0]
    assert 'client.predict(handle_file("photo.jpg"), api_name="/annotate")' in block
    code = block.replace('"http://127.0.0.1:7860/"', repr(served["url"]))
    code = code.replace('"photo.jpg"', repr(str(DATA / "sdeval-1.jpg")))
    before = len(state.log)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    out, info, status = namespace["out"], namespace["info"], namespace["status"]
    schema = state.schema
    assert set(schema.attribute_names) <= set(out)
    for attr in schema:
        entry = out[attr.name]
        probs = entry["probabilities"]
        assert set(probs) == set(attr.label_names) and entry["sources"]["clip"] is not None
        if not attr.multi_label:
            assert entry["label"] == max(probs, key=probs.get) and 0.0 <= entry["confidence"] <= 1.0
    assert out["hair_color"]["sources"]["tags"]["blonde"] > 0.5  # the tags given
    assert out["_image"]["id"].startswith("upload-") and (out["_image"]["width"], out["_image"]["height"]) == (408, 768)
    assert out["_image"]["warnings"] and "--pretrained laion2b_s34b_b79k" in out["_image"]["warnings"][0]
    shown_blonde = out["hair_color"]["label"] == "blonde"  # then "correcting" to blonde is an accept
    assert namespace["logged"]["verdict"] == ("accept" if shown_blonde else "correct") and len(namespace["items"]) == 1
    assert namespace["decided"]["verdict"] == "reject"
    log = state.log.read()
    tail = log.select(range(before, len(log))).to_dict()
    if shown_blonde:
        assert tail["verdict"] == ["accept", "reject"] and tail["reward"] == [1.0, 0.0]
    else:
        assert tail["verdict"] == ["correct", "correct", "reject"] and tail["reward"] == [0.0, 1.0, 0.0]
    assert tail["label"][-2] == "blonde" and tail["id"][-1] == namespace["items"][0]["id"]
    assert info["policy_version"] == "app-v1" and status["policy_version"] == "app-v1"  # from the rule: a new policy
    assert status["events"] == len(log) and status["warnings"] == out["_image"]["warnings"]

    from charattr_hf.models.fusion import CharattrFusionModel

    saved = CharattrFusionModel.from_pretrained(info["saved_to"])
    assert saved.config.policy_version == "app-v1" and saved.config.training_info[-1]["kind"] == "feedback"
    # the training recipe reads the same log as it is
    shutil.copytree(state.log.path, tmp_path / "log.parquet")
    v2 = load_recipe("train_fusion").main([
        "--mode", "feedback", "--dataset", str(served["root"] / "annotated"), "--schema", "synthetic",
        "--feedback", str(tmp_path / "log.parquet"), "--init_from", info["saved_to"],
        "--output_dir", str(tmp_path / "v2"), "--max_epochs", "3", "--eval_fraction", "0"])
    trained = CharattrFusionModel.from_pretrained(v2).config.training_info[-1]
    assert trained["kind"] == "feedback" and trained["events"] >= 1  # the uploaded image's rows are elsewhere


def test_one_policy_round_at_a_time(served, tmp_path):
    """Two rounds asked for at once (two clicks) never write the same version: the second is told to wait, or runs
    after the first and takes the next version; a round while another process trains on the same folder is
    refused."""
    state = served["state"]
    for item in state.next_items(3):  # the log has events whichever tests ran before
        state.decide(item.token, "accept")
    results = at_once(state.retrain, timeout=120)
    done = [r for r in results if isinstance(r, dict)]
    refused = [r for r in results if isinstance(r, UserError)]
    assert len(done) + len(refused) == 2 and done
    assert all("already" in str(r) for r in refused)
    assert len({r["saved_to"] for r in done}) == len(done)  # no folder written twice
    from charattr_hf.models.fusion import CharattrFusionModel

    for r in done:
        saved = CharattrFusionModel.from_pretrained(r["saved_to"]).config
        assert saved.policy_version == Path(r["saved_to"]).name
    # one more round, alone: it continues the policy the last one saved, which (the library's defaults, as
    # benchmarked) keeps its earlier answers on the pool's images without feedback, and states what it changed there
    r = state.retrain()
    saved = CharattrFusionModel.from_pretrained(r["saved_to"]).config
    assert len(saved.training_info) >= 2 and r["continued"] and r["anchor_rows"] == "unlike_feedback"
    kinds = {k["group"]: k for k in r["before_after"]}
    assert r["anchored_images"] > 0 and r["given_images"] >= 24
    assert kinds["images without events"]["images"] > 0 and kinds["images with events"]["events"] >= 1
    assert kinds["images without events"]["events"] == 0 and kinds["all"]["images"] == r["given_images"]
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX); "
         "print('locked', flush=True); time.sleep(120)", str(state.policy_dir / ".lock")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        versions = sorted(p.name for p in state.policy_dir.iterdir())
        with pytest.raises(UserError, match="another process"):
            state.retrain()
        assert sorted(p.name for p in state.policy_dir.iterdir()) == versions
    finally:
        holder.kill()
        holder.wait()


def test_login_when_served_beyond_this_machine(served, tmp_path, capsys, monkeypatch):
    from gradio_client import Client
    from gradio_client.exceptions import AuthenticationError

    from charattr_hf.app.serving import AUTH_ENV, serving_auth
    from charattr_hf.app.ui import launch
    from charattr_hf.cli import run_main

    monkeypatch.delenv(AUTH_ENV, raising=False)
    assert serving_auth("127.0.0.1", None) is None and serving_auth("::1", None) is None
    assert serving_auth("localhost", None) is None and serving_auth("0.0.0.0", None, insecure=True) is None
    assert serving_auth("0.0.0.0", "ann:s3:cret") == ("ann", "s3:cret")
    with pytest.raises(UserError, match="--auth USER:PASSWORD"):
        serving_auth("0.0.0.0", None)
    with pytest.raises(UserError, match="USER:PASSWORD"):
        serving_auth("0.0.0.0", "ann")
    monkeypatch.setenv(AUTH_ENV, "ann:from-env")
    assert serving_auth("0.0.0.0", None) == ("ann", "from-env")
    monkeypatch.delenv(AUTH_ENV)
    # the recipe refuses before it loads anything, in one line, with exit status 2
    recipe = load_recipe("app")
    assert run_main(recipe.main, ["--host", "0.0.0.0", "--feedback_log", str(tmp_path / "fb.parquet")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--auth" in err[0] and "--insecure" in err[0]
    # the library's launch() refuses the same, before it serves anything
    with pytest.raises(UserError, match="--auth USER:PASSWORD"):
        launch(served["state"], host="0.0.0.0", port=free_port(), block=False, quiet=True)
    # never a public share link, which would bypass the login: not with GRADIO_SHARE=true either (the share server
    # is out of reach here: its tunnel is recorded instead of opened)
    import gradio.networking

    tunnels = []
    monkeypatch.setenv("GRADIO_SHARE", "true")
    monkeypatch.setattr(gradio.networking, "setup_tunnel", lambda *a, **k: tunnels.append(k) or "https://x.gradio.live")
    # served with a login: API clients without it are turned away
    demo, url = launch(served["state"], port=free_port(), block=False, quiet=True, auth=("ann", "s3cret"))
    try:
        assert tunnels == [] and demo.share is False and demo.share_url is None
        with pytest.raises(AuthenticationError, match="credentials were not provided"):
            Client(url, verbose=False).predict(api_name="/status")
        with pytest.raises(ValueError, match="Could not login to"):
            Client(url, verbose=False, auth=("ann", "wrong")).predict(api_name="/status")
        import httpx
        from gradio_client.utils import CONFIG_URL, LOGIN_URL

        wrong = httpx.post(url + LOGIN_URL, data={"username": "ann", "password": "wrong"})
        assert wrong.status_code == 400 and "Incorrect credentials" in wrong.text  # the login refused it
        assert httpx.get(url + CONFIG_URL).status_code == 401  # and nothing is served without one
        status = Client(url, verbose=False, auth=("ann", "s3cret")).predict(api_name="/status")
        assert status["feedback_log"] == str(served["state"].log.path)
    finally:
        demo.close()


def _browser():
    """Playwright's Chromium from the Debian package, or a failure that says exactly what is missing."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the browser test needs the Python package 'playwright': pip install -e '.[test]'")
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(f"the browser test needs Chromium at {CHROMIUM}: apt-get update && apt-get install -y chromium")
    return sync_playwright


def test_real_browser_annotate_accept_and_review_keys(served, tmp_path):
    sync_playwright = _browser()
    state, image = served["state"], served["image"]
    with sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        except Exception as exc:  # noqa: BLE001
            pytest.fail(f"Chromium at {CHROMIUM} did not start under playwright: {exc}")
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(served["url"])
        page.wait_for_selector("#annotate-files input[type=file]", state="attached", timeout=30000)
        banner = page.locator("#demo-warning")  # the demo model on uploaded images: said on the page
        assert banner.is_visible() and "synthetic drawings" in banner.inner_text()
        page.set_input_files("#annotate-files input[type=file]", str(image))
        results = page.locator("#annotate-results")
        results.locator("tr[data-attribute='hair_color']").wait_for(timeout=30000)
        text = results.inner_text()
        for name in state.schema.attribute_names:
            assert name in text
        assert any(f"{c / 100:.2f}" in text for c in range(0, 101))  # confidences are shown as numbers
        before = len(state.log)
        page.locator("#annotate-accept").click()
        page.locator("#annotate-feedback-status").get_by_text("logged").wait_for(timeout=15000)
        assert len(state.log) == before + 1
        row = state.log.read()[before]
        assert row["verdict"] == "accept" and row["attribute"] == "hair_color" and row["id"].startswith("upload-")
        page.screenshot(path=str(tmp_path / "annotate.png"), full_page=True)

        # review tab: the 'a' key accepts the item shown
        page.get_by_role("tab", name="Review").click()
        page.locator("#review-card").get_by_text("priority").wait_for(timeout=15000)
        shown = page.locator("#review-card").inner_text()
        page.keyboard.press("a")
        deadline = time.time() + 15
        while len(state.log) == before + 1 and time.time() < deadline:
            time.sleep(0.2)
        assert len(state.log) == before + 2
        last = state.log.read()[before + 1]
        assert last["verdict"] == "accept" and last["id"] in shown
        page.screenshot(path=str(tmp_path / "review.png"), full_page=True)
        browser.close()
    assert (tmp_path / "annotate.png").stat().st_size > 10_000


@pytest.mark.slow
def test_real_browser_logs_in_when_the_app_asks(served):
    """Served with --auth: the page is Gradio's login form until the right password is given."""
    sync_playwright = _browser()
    from charattr_hf.app.ui import launch

    demo, url = launch(served["state"], port=free_port(), block=False, quiet=True, auth=("ann", "s3cret"))
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(url)
            page.locator("input[type=password]").wait_for(timeout=30000)
            assert page.locator("#annotate-files").count() == 0  # nothing of the app before the login
            page.locator("input[type=text]").first.fill("ann")
            page.locator("input[type=password]").fill("wrong")
            page.locator("button").filter(has_text="Login").click()
            page.get_by_text("Incorrect", exact=False).wait_for(timeout=15000)
            page.locator("input[type=text]").first.fill("ann")
            page.locator("input[type=password]").fill("s3cret")
            page.locator("button").filter(has_text="Login").click()
            page.wait_for_selector("#annotate-files input[type=file]", state="attached", timeout=30000)
            assert "synthetic drawings" in page.locator("#demo-warning").inner_text()
            browser.close()
    finally:
        demo.close()


def test_recipe_retrains_from_the_log_and_reports_user_errors(served, tmp_path, capsys):
    recipe = load_recipe("app")
    log = tmp_path / "feedback.parquet"
    shutil.copytree(served["state"].log.path, log)
    if served["state"].log.rows_path.exists():
        shutil.copytree(served["state"].log.rows_path, tmp_path / "feedback.rows.parquet")
    assert len(FeedbackLog(log)) > 0
    code = recipe.main(["--dataset", str(served["root"] / "annotated"), "--feedback_log", str(log), "--retrain",
                        "--auth", "ann:pw-one", "--auth=ann:pw-two"])  # the last one counts
    assert code == 0
    saved = tmp_path / "feedback-policy" / "app-v1"  # from the rule: a fresh policy, learned from the log alone
    out = capsys.readouterr().out
    assert (saved / "model.safetensors").is_file() and '"policy_version": "app-v1"' in out
    recorded = json.loads((saved / "config.json").read_text())["training_info"][-1]["command"]
    assert recorded.endswith("--retrain --auth '***' '--auth=***'")  # the command, without the password
    for text in (out, (saved / "config.json").read_text(), (saved / "README.md").read_text()):
        assert "pw-one" not in text and "pw-two" not in text
    assert recipe.main(["--dataset", str(served["root"] / "annotated"), "--feedback_log", str(log), "--retrain"]) == 0
    assert (tmp_path / "feedback-policy" / "app-v2").is_dir() and (saved / "model.safetensors").is_file()  # kept
    capsys.readouterr()
    from charattr_hf.cli import run_main

    assert run_main(recipe.main, ["--dataset", str(tmp_path / "missing"), "--feedback_log", str(log)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing" in err[0]


def test_a_review_item_is_decided_once(served):
    """A double key press or a retried API call decides an item once: the second decision on its token is refused
    as a stale item is, and logs nothing; a mistake in a decision (no label to correct to) leaves the item open."""
    state = served["state"]
    item = state.next_items(1)[0]
    before = len(state.log)
    with pytest.raises(UserError, match="needs the right label"):
        state.decide(item.token, "correct")
    results = at_once(lambda: state.decide(item.token, "accept"), timeout=60)
    assert sorted(type(r).__name__ for r in results) == ["UserError", "dict"]
    assert "stale" in str(next(r for r in results if isinstance(r, UserError)))
    with pytest.raises(UserError, match="unknown or stale review item"):
        state.decide(item.token, "reject")
    with pytest.raises(UserError, match="unknown or stale review item"):
        state.decide("no-such-token", "reject")
    assert len(state.log) == before + 1
    assert state.log.read_table(columns=["id", "attribute"]).to_pylist()[-1] == {"id": item.id,
                                                                                "attribute": item.attribute}


def test_the_queue_takes_the_attributes_in_turn():
    """Ranked by priority alone, the attribute that is least certain by nature would fill the queue; in turn, each
    attribute's most urgent items come first and every round is ordered by urgency."""
    from charattr_hf.app.review import interleave_attributes

    rng = np.random.default_rng(0)
    items = [(-0.9 - 0.1 * rng.random(), r, 0) for r in range(50)]  # attribute 0: urgent everywhere
    items += [(-0.2 - 0.5 * rng.random(), r, j) for j in (1, 2) for r in range(50)]
    by_priority = sorted(items)
    assert {j for _, _, j in by_priority[:50]} == {0}
    order = interleave_attributes(items)
    assert sorted(order) == by_priority  # the same items, none lost
    for k in range(50):  # round k: the k-th most urgent item of each attribute, more urgent first
        round_k = order[3 * k: 3 * k + 3]
        assert sorted(j for _, _, j in round_k) == [0, 1, 2] and round_k == sorted(round_k)
        for prio, r, j in round_k:
            assert (prio, r, j) == sorted(i for i in items if i[2] == j)[k]
