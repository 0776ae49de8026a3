"""The review app: its data access and feedback log, then the served app driven by ``gradio_client`` and by a real
headless Chromium (playwright). The app runs in this process on a free localhost port with the demo models."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import socket
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
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
    ft.validate_feedback(read, ft.build_config(schema))
    # a log written by the simulator (the original columns only) is extended, not rejected
    sim = ft.simulate_feedback(ft.simulate_annotated(schema, 5, seed=1, sources=("clip",)), ft.build_config(schema))
    sim.to_parquet(str(tmp_path / "sim.parquet"))
    old = FeedbackLog(tmp_path / "sim.parquet")
    assert old.append(acc) == len(sim) + 1
    (tmp_path / "not.parquet").write_bytes(pq_bytes(pa.table({"x": [1]})))
    with pytest.raises(UserError, match="not a feedback log"):
        FeedbackLog(tmp_path / "not.parquet")
    with pytest.raises(UserError, match=r"\.parquet"):
        FeedbackLog(tmp_path / "fb.csv")


def pq_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


# ------------------------------------------------------------------------------------------ the served app
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    pytest.importorskip("gradio", reason="the app needs gradio: pip install -e '.[app]'")  # installed by [test]
    from charattr_hf.api import annotate_to_disk
    from charattr_hf.app import AppConfig, AppState
    from charattr_hf.app.ui import launch
    from charattr_hf.pipeline import PipelineOptions

    root = tmp_path_factory.mktemp("app")
    sample = synthetic.generate(24, seed=5, size=64, noise="mixed", styles=["flat", "lit", "sketch"])
    annotate_to_disk(sample, root / "annotated", keep_images=True, progress=False, num_proc=1,
                     cache_dir=str(root / "cache"))
    config = AppConfig(dataset=str(root / "annotated"), feedback_log=str(root / "log" / "feedback.parquet"),
                       pool_size=24, train_epochs=15, train_patience=5,
                       pipeline=PipelineOptions(fusion="demo", cache_dir=str(root / "cache")))
    state = AppState(config)
    port = free_port()
    demo, url = launch(state, port=port, block=False, quiet=True)
    image = root / "character.png"
    image.write_bytes(synthetic.make_item(7, 3, size=512, styles=["flat"])["image"]["bytes"])
    yield {"state": state, "url": url, "root": root, "image": image}
    demo.close()


def test_api_annotate_review_and_retrain_with_gradio_client(served, tmp_path):
    from gradio_client import Client, handle_file

    state, image = served["state"], served["image"]
    client = Client(served["url"], verbose=False)
    out = client.predict(handle_file(str(image)), "", api_name="/annotate")
    schema = state.schema
    assert set(schema.attribute_names) <= set(out)
    for attr in schema:
        entry = out[attr.name]
        probs = entry["probabilities"]
        assert set(probs) == set(attr.label_names)
        clip = entry["sources"]["clip"]
        assert clip is not None and entry["sources"]["tags"] is None  # no tags were given
        if not attr.multi_label:
            assert entry["label"] == max(probs, key=probs.get)
            assert 0.0 <= entry["confidence"] <= 1.0 and abs(sum(clip.values()) - 1.0) < 1e-3
    # the in-memory path gives what the batch pipeline gives for the same image and settings
    from charattr_hf.api import annotate

    ref = annotate(Dataset.from_dict({"image": [str(image)]}).cast_column("image", __import__("datasets").Image()),
                   fusion="demo", progress=False, cache_dir=str(tmp_path / "cache"))
    for attr in schema:
        if not attr.multi_label:
            assert out[attr.name]["label"] == attr.labels[ref[0][attr.name]].name
            assert out[attr.name]["confidence"] == pytest.approx(ref[0][f"{attr.name}_confidence"], abs=1e-4)
    assert out["_image"]["id"].startswith("upload-") and out["_image"]["width"] == 512

    # review: items come ordered by priority; decisions land in the log in the training format
    items = client.predict(3, api_name="/review_next")
    assert len(items) == 3 and items[0]["priority"] >= items[1]["priority"] >= items[2]["priority"]
    log_path = state.log.path
    before = len(state.log)
    r1 = client.predict(items[0]["token"], "accept", "", api_name="/review_decide")
    attr1 = schema[items[1]["attribute"]]
    right = [n for n in attr1.label_names if n != items[1]["shown_label"]][0]
    r2 = client.predict(items[1]["token"], "correct", right, api_name="/review_decide")
    assert r1["events"] == before + 1 and r2["events"] == before + 3
    up = client.predict(out["_image"]["id"], "hair_color", "reject", "", api_name="/annotate_feedback")
    assert up["events"] == before + 4
    log = ft.load_table(str(log_path))
    tail = log.select(range(before, before + 4)).to_dict()
    assert tail["verdict"] == ["accept", "correct", "correct", "reject"]
    assert tail["reward"] == [1.0, 0.0, 1.0, 0.0]
    assert tail["propensity"][0] == pytest.approx(items[0]["propensity"])
    assert tail["label"][2] == right and tail["id"][:2] == [items[0]["id"], items[1]["id"]]
    again = client.predict(5, api_name="/review_next")
    assert items[0]["token"] not in {i["token"] for i in again}  # decided items leave the queue
    with pytest.raises(Exception, match="stale|unknown"):
        client.predict("nope\thair_color", "accept", "", api_name="/review_decide")

    # teach the policy from the log: a new version, saved, used for annotation and the queue
    info = client.predict(api_name="/retrain")
    assert info["policy_version"] == "demo-v2" and info["events"] >= 4
    # the pool's images without feedback hold the earlier answers (the library's defaults, as benchmarked), and
    # the round states what it changed on them
    assert info["anchored_images"] > 0 and info["given_images"] >= 24
    kinds = {r["group"]: r for r in info["before_after"]}
    assert kinds["images without events"]["images"] > 0 and kinds["images with events"]["events"] >= 3
    from charattr_hf.models.fusion import CharattrFusionModel

    saved = CharattrFusionModel.from_pretrained(info["saved_to"])
    assert saved.config.policy_version == "demo-v2" and saved.config.training_info[-1]["kind"] == "feedback"
    assert client.predict(api_name="/status")["policy_version"] == "demo-v2"
    assert client.predict(handle_file(str(image)), "", api_name="/annotate")["_image"]["fusion"] == "demo-v2"

    # the training recipe reads the same log as it is
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_fusion", Path(__file__).parents[1] / "recipes" /
                                                  "train_fusion.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    shutil.copy(log_path, tmp_path / "log.parquet")
    v3 = recipe.main(["--mode", "feedback", "--dataset", str(served["root"] / "annotated"), "--schema", "synthetic",
                      "--feedback", str(tmp_path / "log.parquet"), "--init_from", info["saved_to"],
                      "--output_dir", str(tmp_path / "v3"), "--max_epochs", "3", "--eval_fraction", "0"])
    trained = CharattrFusionModel.from_pretrained(v3).config.training_info[-1]
    assert trained["kind"] == "feedback" and trained["events"] >= 2  # the uploaded image's rows are elsewhere


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


def test_recipe_retrains_from_the_log_and_reports_user_errors(served, tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("app_recipe", Path(__file__).parents[1] / "recipes" / "app.py")
    recipe = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = recipe  # its dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(recipe)
    log = tmp_path / "feedback.parquet"
    shutil.copy(served["state"].log.path, log)
    if served["state"].log.rows_path.exists():
        shutil.copy(served["state"].log.rows_path, tmp_path / "feedback.rows.parquet")
    assert len(FeedbackLog(log)) > 0
    code = recipe.main(["--dataset", str(served["root"] / "annotated"), "--feedback_log", str(log), "--retrain",
                        "--fusion", "none"])
    assert code == 0
    saved = tmp_path / "feedback-policy" / "app-v1"  # from the rule: a fresh policy, learned from the log alone
    assert (saved / "model.safetensors").is_file() and '"policy_version": "app-v1"' in capsys.readouterr().out
    from charattr_hf.cli import run_main

    assert run_main(recipe.main, ["--dataset", str(tmp_path / "missing"), "--feedback_log", str(log)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing" in err[0]


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
