"""Screenshots of the review app's three tabs for the README, taken with headless Chromium (playwright).

    python docs/screenshots.py            # writes docs/images/app-{annotate,browse,review}.png

Annotates 48 synthetic characters (kept images, 128 px) into a temporary folder, serves the app on a free port
with the demo models, and drives the page as a person would.
"""

from __future__ import annotations

import os
import socket
import tempfile
from dataclasses import replace
from pathlib import Path

_TMP = tempfile.mkdtemp(prefix="charattr-shots-")
os.environ.setdefault("HF_HOME", os.path.join(_TMP, "hf"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def main() -> None:
    from playwright.sync_api import sync_playwright

    from charattr_hf import synthetic
    from charattr_hf.api import annotate_to_disk
    from charattr_hf.app import AppConfig, AppState
    from charattr_hf.app.ui import launch
    from charattr_hf.pipeline import PipelineOptions

    out = Path(__file__).parent / "images"
    out.mkdir(exist_ok=True)
    root = Path(_TMP)
    sample = synthetic.generate(48, seed=2, size=128, noise="mixed",
                                styles=["flat", "chibi", "sketch", "watercolor", "pixel", "lit"])
    options = PipelineOptions(fusion="demo")  # the same flags for the dataset and the app, as the README says
    annotate_to_disk(sample, root / "annotated", progress=False, options=replace(options, keep_images=True))
    state = AppState(AppConfig(dataset=str(root / "annotated"), feedback_log=str(root / "feedback.parquet"),
                               pipeline=options))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo, url = launch(state, port=port, block=False, quiet=True)
    item = synthetic.make_item(4, 21, size=512, styles=["lit"], noise="mixed")
    image = root / "character.png"
    image.write_bytes(item["image"]["bytes"])

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(url)
        page.wait_for_selector("#annotate-files input[type=file]", state="attached")
        page.fill("#annotate-tags textarea, #annotate-tags input", item["tags"] or "")
        page.set_input_files("#annotate-files input[type=file]", str(image))
        page.locator("#annotate-results tr[data-attribute='art_style']").wait_for(timeout=60000)
        page.locator("#annotate-accept").click()
        page.locator("#annotate-feedback-status").get_by_text("logged").wait_for()
        page.screenshot(path=str(out / "app-annotate.png"), full_page=True)

        page.get_by_role("tab", name="Browse").click()
        page.locator("#browse-attribute input").click()
        page.get_by_role("option", name="hair_color").click()
        page.get_by_label("Sources disagree").check()
        page.locator("#browse-apply").click()
        page.locator("#browse-status").get_by_text("matching").wait_for()
        page.wait_for_timeout(1500)
        page.locator("#browse-gallery button.thumbnail-item").first.click()
        page.locator("#browse-detail table").wait_for()
        page.screenshot(path=str(out / "app-browse.png"), full_page=True)

        page.get_by_role("tab", name="Review").click()
        page.locator("#review-card").get_by_text("priority").wait_for()
        page.keyboard.press("a")
        page.wait_for_timeout(1500)
        page.screenshot(path=str(out / "app-review.png"), full_page=True)
        browser.close()
    demo.close()
    print(f"wrote {', '.join(str(p) for p in sorted(out.glob('app-*.png')))}")


if __name__ == "__main__":
    main()
