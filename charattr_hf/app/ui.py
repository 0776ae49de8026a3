"""The Gradio page (three tabs) and the API endpoints, over an :class:`~charattr_hf.app.state.AppState`.

API (``gradio_client.Client(url).predict(..., api_name=...)``; every parameter has a name, optional ones a
default, so a call may give them by name and leave the optional ones out):

=====================  ================================================  =========================================
endpoint               parameters (optional ones with their default)     output (JSON)
=====================  ================================================  =========================================
``/annotate``          ``image`` (a file), ``tags=None``                 ``{attribute: {label, confidence,
                                                                         probabilities, sources}, _image}``
``/annotate_feedback`` ``upload_id``, ``attribute``, ``verdict``,        what was logged
                       ``label=None``
``/review_next``       ``n=1``                                           the next items of the review queue
``/review_decide``     ``token``, ``verdict``, ``label=None``            what was logged
``/retrain``           (none)                                            the new policy version and its round
``/status``            (none)                                            log size, queue size, policy version,
                                                                         warnings
=====================  ================================================  =========================================

Verdicts are ``accept``, ``reject`` and ``correct`` (with the right label; several, comma-separated, for a
multi-label attribute).
"""

from __future__ import annotations

import base64
import functools
import html
import io
import logging
import os
import time
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from ..errors import UserError  # noqa: E402
from .data import Query  # noqa: E402
from .serving import check_serving  # noqa: E402
from .state import AppState  # noqa: E402

logger = logging.getLogger(__name__)

__all__ = ["build_ui", "launch", "CSS", "KEYBOARD_JS"]

CSS = """
.ca-card { border: 1px solid #d0d7de; border-radius: 8px; padding: 10px; margin-bottom: 12px; }
.ca-head { display: flex; gap: 12px; align-items: flex-start; }
.ca-head img { width: 128px; height: 128px; object-fit: contain; border-radius: 6px; background: #f3f4f6; }
.ca-table { border-collapse: collapse; width: 100%; font-size: 13px; }
.ca-table th, .ca-table td { padding: 3px 6px; border-bottom: 1px solid #eaeef2; text-align: left; vertical-align: middle; }
.ca-bar { display: inline-block; width: 90px; height: 9px; background: #eaeef2; border-radius: 5px;
          vertical-align: middle; margin-right: 5px; overflow: hidden; }
.ca-bar > span { display: block; height: 100%; background: #2f81f7; }
.ca-bar.low > span { background: #d29922; } .ca-bar.vlow > span { background: #cf222e; }
.ca-tag { display: inline-block; background: #ddf4ff; color: #0550ae; border-radius: 10px; padding: 1px 8px;
          margin: 2px; font-size: 12px; }
.ca-flag { display: inline-block; background: #fff8c5; color: #7d4e00; border-radius: 10px; padding: 1px 8px;
           margin: 2px; font-size: 12px; }
.ca-muted { color: #6e7781; font-size: 12px; }
.ca-warning { background: #fff8c5; border: 1px solid #d4a72c; border-radius: 6px; padding: 4px 12px; }
.ca-shown { font-size: 20px; margin: 6px 0; }
kbd { border: 1px solid #d0d7de; border-bottom-width: 2px; border-radius: 4px; padding: 0 4px; font-size: 12px; }
"""

#: Keyboard shortcuts of the Review tab: a accept, r reject, c correct, s skip (not while typing in a field).
KEYBOARD_JS = """
<script>
document.addEventListener('keydown', function (ev) {
  const t = ev.target; const tag = (t && t.tagName || '').toLowerCase();
  if (tag === 'input' || tag === 'textarea' || tag === 'select' || (t && t.isContentEditable)) return;
  if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
  const ids = {a: 'review-accept', r: 'review-reject', c: 'review-correct', s: 'review-skip'};
  const id = ids[ev.key.toLowerCase()]; if (!id) return;
  let el = document.getElementById(id); if (!el) return;
  if (el.tagName !== 'BUTTON') el = el.querySelector('button') || el;
  if (el.offsetParent === null) return;  // the Review tab is not showing
  ev.preventDefault(); el.click();
});
</script>
"""


# ---------------------------------------------------------------------------------------------- rendering
def _bar(p: float | None) -> str:
    if p is None:
        return '<span class="ca-muted">-</span>'
    cls = "" if p >= 0.75 else ("low" if p >= 0.5 else "vlow")
    return (f'<span class="ca-bar {cls}"><span style="width:{max(0.0, min(1.0, p)) * 100:.0f}%"></span></span>'
            f"{p:.2f}")


def _top(probs: dict | None, multi: bool, threshold: float = 0.5) -> str:
    if not probs:
        return '<span class="ca-muted">no evidence</span>'
    if multi:
        picks = [(n, p) for n, p in probs.items() if p >= threshold]
        if not picks:
            return '<span class="ca-muted">none</span>'
        return "<br>".join(f"{html.escape(n)} {_bar(p)}" for n, p in sorted(picks, key=lambda x: -x[1]))
    name, p = max(probs.items(), key=lambda x: x[1])
    return f"{html.escape(name)} {_bar(p)}"


def _thumb(img, size: int = 256) -> str:
    if img is None:
        return ""
    img = img.convert("RGB")
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return f'<img src="data:image/jpeg;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def render_result(state: AppState, result: dict, img=None, name: str | None = None) -> str:
    """One annotated image as an HTML card: per attribute the fused label with a confidence bar, every source's
    view side by side, then flags and predicted tags."""
    meta = result.get("_image", {})
    sources = state.annotator.sources
    head = "".join(f"<th>{html.escape(s)}</th>" for s in sources)
    rows = []
    for attr in state.schema:
        entry = result.get(attr.name)
        if entry is None:
            continue
        label, conf = entry["label"], entry["confidence"]
        if attr.multi_label:
            fused = "<br>".join(f"<b>{html.escape(n)}</b> {_bar(c)}" for n, c in zip(label or [], conf or [])) \
                or '<span class="ca-muted">none</span>'
        else:
            fused = f"<b>{html.escape(label)}</b> {_bar(conf)}" if label is not None else \
                '<span class="ca-muted">no evidence</span>'
        cells = "".join(f"<td>{_top(entry['sources'].get(s), attr.multi_label, attr.threshold)}</td>"
                        for s in sources)
        rows.append(f'<tr data-attribute="{attr.name}"><td>{attr.name}</td><td>{fused}</td>{cells}</tr>')
    flags = "".join(f'<span class="ca-flag">{html.escape(f)}</span>' for f in meta.get("flags") or []) or \
        '<span class="ca-muted">none</span>'
    tags = "".join(f'<span class="ca-tag">{html.escape(t)}</span>' for t in meta.get("predicted_tags") or [])
    error = f'<div class="ca-flag">error: {html.escape(meta["error"])}</div>' if meta.get("error") else ""
    title = html.escape(name or meta.get("id", ""))
    return (
        f'<div class="ca-card"><div class="ca-head">{_thumb(img, 128)}<div><b>{title}</b><br>'
        f'<span class="ca-muted">id {html.escape(meta.get("id", ""))} · {meta.get("width")}x{meta.get("height")} · '
        f'fusion {html.escape(str(meta.get("fusion")))} · {meta.get("seconds", 0):.2f}s</span><br>'
        f"flags: {flags}<br>predicted tags: {tags or '<span class=ca-muted>none</span>'}{error}</div></div>"
        f'<table class="ca-table"><tr><th>attribute</th><th>fused</th>{head}</tr>{"".join(rows)}</table></div>'
    )


def render_row(state: AppState, row: dict) -> str:
    """A row of the annotated output in full."""
    store = state.store
    parts = []
    for info in store.attributes:
        value, conf = row.get(info.name), row.get(f"{info.name}_confidence")
        if info.multi_label:
            names = [info.labels[v] for v in value or []]
            fused = "<br>".join(f"<b>{html.escape(n)}</b> {_bar(c)}" for n, c in zip(names, conf or [])) or \
                '<span class="ca-muted">none</span>'
        else:
            fused = f"<b>{html.escape(info.labels[value])}</b> {_bar(conf)}" if value is not None else \
                '<span class="ca-muted">-</span>'
        cells = []
        for s in store.sources:
            vec = (row.get(f"probs_{s}") or {}).get(info.name)
            probs = None if vec is None else dict(zip(info.labels, vec))
            cells.append(f"<td>{_top(probs, info.multi_label, info.threshold)}</td>")
        truth = ""
        if isinstance(row.get("truth"), dict) and row["truth"].get(info.name) is not None:
            t = row["truth"][info.name]
            truth = ", ".join(info.labels[v] for v in t) if info.multi_label else info.labels[t]
        parts.append(f"<tr><td>{info.name}</td><td>{fused}</td>{''.join(cells)}<td>{html.escape(truth)}</td></tr>")
    head = "".join(f"<th>{html.escape(s)}</th>" for s in store.sources)
    flags = "".join(f'<span class="ca-flag">{html.escape(f)}</span>' for f in row.get("flags") or []) or "none"
    extra = {k: v for k, v in row.items() if k in ("index", "path", "sha256", "width", "height", "style",
                                                   "dup_group", "duplicate_of", "reasons", "error")}
    meta = " · ".join(f"{k}: {html.escape(str(v))}" for k, v in extra.items() if v not in (None, [], ""))
    q = row.get("quality") or {}
    quality = ", ".join(f"{k} {v:.2f}" for k, v in q.items() if v is not None)
    return (f'<div class="ca-card"><b>{html.escape(str(row.get("id")))}</b><br><span class="ca-muted">{meta}</span>'
            f"<br>flags: {flags}<br><span class='ca-muted'>quality: {html.escape(quality)}</span>"
            f'<table class="ca-table"><tr><th>attribute</th><th>fused</th>{head}<th>truth</th></tr>'
            f"{''.join(parts)}</table></div>")


def _placeholder(text: str):
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (160, 160), (240, 242, 245))
    d = ImageDraw.Draw(img)
    d.text((8, 70), text[:24], fill=(90, 90, 90))
    return img


def render_item(state: AppState, item) -> str:
    attr = state.schema[item.attribute]
    question = (f"Is <b>{html.escape(item.shown_label)}</b> present?" if attr.multi_label
                else f"Is it <b>{html.escape(item.shown_label)}</b>?")
    probs = "".join(f"<tr><td>{html.escape(n)}</td><td>{_bar(p)}</td>"
                    + "".join(f"<td>{_bar((item.sources.get(s) or {}).get(n))}</td>" for s in state.queue.sources)
                    + "</tr>" for n, p in (item.probabilities or {}).items())
    head = "".join(f"<th>{html.escape(s)}</th>" for s in state.queue.sources)
    why = " · ".join(f"{k.replace('_', ' ')} {v:.2f}" for k, v in item.reasons.items())
    return (f'<div class="ca-card"><span class="ca-muted">{html.escape(item.id)} · priority {item.priority:.2f} '
            f"({why}) · shown with probability {item.propensity:.2f} by {html.escape(item.policy_version)}</span>"
            f'<div class="ca-shown">{html.escape(item.attribute)}: {question}</div>'
            f'<table class="ca-table"><tr><th>label</th><th>policy</th>{head}</tr>{probs}</table>'
            f'<div class="ca-muted">keys: <kbd>a</kbd> accept · <kbd>r</kbd> reject · <kbd>c</kbd> correct to the '
            f"chosen label · <kbd>s</kbd> skip</div></div>")


def _status_md(state: AppState) -> str:
    s = state.status()
    text = f"**{s['events']}** events in `{s['feedback_log']}` · policy `{s['policy_version']}`"
    if "remaining" in s:
        text += f" · {s['remaining']} of {s['items']} items left in the queue ({s['pool_rows']} rows)"
    return text


def _labels(value: Any) -> Any:
    if value is None or value == "":
        return None
    if isinstance(value, str) and "," in value:
        return [v.strip() for v in value.split(",") if v.strip()]
    return value


def _guard(fn):
    """Show a user's mistake as a message in the page (and an error to API clients), not a traceback. The wrapper
    keeps ``fn``'s signature (``functools.wraps``): Gradio names an endpoint's parameters, and knows which are
    optional, from it."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            raise gr.Error(str(exc)) from exc

    return wrapper


def _warnings_md(warnings) -> str:
    return "\n\n".join(f"**Warning**: {html.escape(w)}." for w in warnings)


# ---------------------------------------------------------------------------------------------- the page
def build_ui(state: AppState) -> gr.Blocks:
    schema = state.schema
    attr_names = schema.attribute_names
    store = state.store

    with gr.Blocks(title="charattr-hf review", analytics_enabled=False) as demo:
        gr.Markdown("## charattr-hf · annotate, browse, review\n"
                    f"schema `{schema.name}` · sources {', '.join(state.annotator.sources) or '-'} · "
                    f"fusion `{state.policy_version}`"
                    + (f" · dataset `{store.source}` ({store.num_rows} rows)" if store else ""))
        if state.warnings:  # the demo models on uploaded (real) images: said where the labels are read
            gr.Markdown(_warnings_md(state.warnings), elem_id="demo-warning", elem_classes=["ca-warning"])
        with gr.Tabs():
            # ------------------------------------------------------------------ Annotate
            with gr.Tab("Annotate", id="annotate"):
                with gr.Row():
                    with gr.Column(scale=1):
                        files = gr.File(label="Images", file_count="multiple", file_types=["image"],
                                        elem_id="annotate-files")
                        tags_in = gr.Textbox(label="Tags or caption (optional: feeds the tag source)",
                                             placeholder="1girl, blonde_hair, blue_eyes, hat", elem_id="annotate-tags")
                        run_btn = gr.Button("Annotate", variant="primary", elem_id="annotate-run")
                        gr.Markdown("#### Is it right?")
                        up_image = gr.Dropdown(label="Image", choices=[], elem_id="annotate-image")
                        up_attr = gr.Dropdown(label="Attribute", choices=attr_names, value=attr_names[0],
                                              elem_id="annotate-attribute")
                        up_label = gr.Dropdown(label="Right label (for Correct)", choices=[], multiselect=False,
                                               elem_id="annotate-label")
                        with gr.Row():
                            acc_btn = gr.Button("Accept", elem_id="annotate-accept", variant="primary")
                            rej_btn = gr.Button("Reject", elem_id="annotate-reject", variant="stop")
                            cor_btn = gr.Button("Correct", elem_id="annotate-correct")
                        acc_all = gr.Button("Accept all labels of this image", elem_id="annotate-accept-all")
                        up_status = gr.Markdown(elem_id="annotate-feedback-status")
                    with gr.Column(scale=2):
                        results = gr.HTML(elem_id="annotate-results")

                def on_annotate(paths, tags):
                    if not paths:
                        return "", gr.update(choices=[], value=None)
                    paths = [p if isinstance(p, str) else p.name for p in paths]
                    t0 = time.perf_counter()
                    items = state.annotate_files(paths, tags or None)
                    seconds = (time.perf_counter() - t0) / len(items)
                    from PIL import Image

                    cards, choices = [], []
                    for p, it in zip(paths, items):
                        res = state.annotator.result(it)
                        res["_image"] = {"id": it.id, "width": it.row.get("width"), "height": it.row.get("height"),
                                         "flags": it.row.get("flags") or [], "error": it.row.get("error"),
                                         "predicted_tags": state.predicted_tags(it), "fusion": state.policy_version,
                                         "seconds": seconds}
                        try:
                            img = Image.open(p)
                        except Exception:  # noqa: BLE001 - unreadable upload: its row says why
                            img = None
                        cards.append(render_result(state, res, img, os.path.basename(p)))
                        choices.append((f"{os.path.basename(p)} ({it.id})", it.id))
                    return "".join(cards), gr.update(choices=choices, value=choices[0][1])

                def label_choices(attribute):
                    attr = schema[attribute]
                    return gr.update(choices=attr.label_names, value=None, multiselect=attr.multi_label)

                def on_upload_decision(verdict):
                    def fn(upload_id, attribute, label):
                        if not upload_id:
                            raise gr.Error("annotate an image first")
                        try:
                            out = state.decide_upload(upload_id, attribute, verdict, label)
                        except UserError as exc:
                            raise gr.Error(str(exc)) from exc
                        return (f"logged **{out['verdict']}** of {attribute} = `{out['shown']}` "
                                f"({_count(out['events'], 'event')} in the log)")
                    return fn

                def on_accept_all(upload_id):
                    if not upload_id:
                        raise gr.Error("annotate an image first")
                    n = 0
                    for a in attr_names:
                        try:
                            state.decide_upload(upload_id, a, "accept")
                            n += 1
                        except UserError:
                            continue
                    return (f"logged **accept** for {_count(n, 'attribute')} ({_count(len(state.log), 'event')} in the "
                            "log)")

                run_btn.click(_guard(on_annotate), [files, tags_in], [results, up_image], api_name=False)
                files.upload(_guard(on_annotate), [files, tags_in], [results, up_image], api_name=False)
                up_attr.change(label_choices, [up_attr], [up_label], api_name=False)
                acc_btn.click(on_upload_decision("accept"), [up_image, up_attr, up_label], [up_status], api_name=False)
                rej_btn.click(on_upload_decision("reject"), [up_image, up_attr, up_label], [up_status], api_name=False)
                cor_btn.click(on_upload_decision("correct"), [up_image, up_attr, up_label], [up_status],
                              api_name=False)
                acc_all.click(on_accept_all, [up_image], [up_status], api_name=False)
                demo.load(label_choices, [up_attr], [up_label], api_name=False)

            # ------------------------------------------------------------------ Browse
            with gr.Tab("Browse", id="browse"):
                if store is None:
                    gr.Markdown("Start the app with `--dataset OUTPUT_DIR_OR_HUB_ID` to browse an annotated output.")
                else:
                    flag_choices = ["(any)", "any", "error"] + store.flag_names()
                    with gr.Row():
                        b_attr = gr.Dropdown(["(any)"] + [a.name for a in store.attributes], value="(any)",
                                             label="Attribute", elem_id="browse-attribute")
                        b_label = gr.Dropdown(["(any)"], value="(any)", label="Label", elem_id="browse-label")
                        b_min = gr.Slider(0, 1, value=0, step=0.01, label="Confidence from")
                        b_max = gr.Slider(0, 1, value=1, step=0.01, label="to")
                    with gr.Row():
                        b_flag = gr.Dropdown(flag_choices, value="(any)", label="Flag")
                        b_dup = gr.Dropdown(["(any)", "grouped", "unique"], value="(any)", allow_custom_value=True,
                                            label=f"Duplicates ({store.dup_column or 'same sha256'}; or a group)")
                        b_dis = gr.Checkbox(label="Sources disagree", value=False)
                        b_apply = gr.Button("Filter", variant="primary", elem_id="browse-apply")
                    with gr.Row():
                        b_prev = gr.Button("◀ Previous", size="sm")
                        b_page = gr.Number(value=1, precision=0, label="Page", minimum=1)
                        b_next = gr.Button("Next ▶", size="sm")
                        b_status = gr.Markdown(elem_id="browse-status")
                    gallery = gr.Gallery(label="Rows", columns=8, height="auto", allow_preview=False,
                                         elem_id="browse-gallery", object_fit="contain")
                    detail = gr.HTML(elem_id="browse-detail")
                    page_rows = gr.State([])

                    def b_labels(attribute):
                        if attribute in (None, "(any)"):
                            return gr.update(choices=["(any)"], value="(any)")
                        return gr.update(choices=["(any)"] + list(store.attribute(attribute).labels), value="(any)")

                    def make_query(attribute, label, lo, hi, flag, dup, dis) -> Query:
                        attribute = None if attribute in (None, "(any)") else attribute
                        return Query(attribute=attribute, label=None if label in (None, "(any)") else label,
                                     conf_min=float(lo or 0.0), conf_max=float(hi if hi is not None else 1.0),
                                     flag=None if flag in (None, "(any)") else flag,
                                     duplicates=None if dup in (None, "", "(any)") else dup, disagree=bool(dis))

                    def show(attribute, label, lo, hi, flag, dup, dis, page):
                        q = make_query(attribute, label, lo, hi, flag, dup, dis)
                        page = max(1, int(page or 1))
                        rows, st = store.page(q, page - 1, state.config.page_size)
                        data = store.read_rows(rows)
                        tiles = []
                        for r, row, img in zip(rows, data, store.images(rows, [d.get("path") for d in data])):
                            if img is not None:
                                img = img.convert("RGB")
                                img.thumbnail((160, 160))
                            cap = str(row["id"])
                            if q.attribute:
                                v, c = row.get(q.attribute), row.get(f"{q.attribute}_confidence")
                                name = store.label_name(q.attribute, v)
                                if isinstance(c, list):
                                    c = min(c) if c else None
                                cap = f"{name} {c:.2f}" if c is not None else f"{name}"
                            tiles.append((img if img is not None else _placeholder(str(row["id"])), cap))
                        total = f"{len(st['matches'])}" if st["done"] else f"≥ {len(st['matches'])}"
                        first = (page - 1) * state.config.page_size
                        text = (f"rows {first + 1 if rows else 0}–{first + len(rows)} of {total} matching "
                                f"({st['scanned']}/{len(store.groups)} row groups read, {store.num_rows} rows)")
                        return tiles, rows, text, page

                    def on_select(rows, evt: gr.SelectData):
                        if evt is None or evt.index is None or evt.index >= len(rows):
                            return ""
                        r = rows[evt.index]
                        return render_row(state, store.read_rows([r])[0])

                    inputs = [b_attr, b_label, b_min, b_max, b_flag, b_dup, b_dis]
                    outs = [gallery, page_rows, b_status, b_page]
                    b_attr.change(b_labels, [b_attr], [b_label], api_name=False)
                    b_apply.click(_guard(lambda *a: show(*a, 1)), inputs, outs, api_name=False)
                    b_page.submit(_guard(show), inputs + [b_page], outs, api_name=False)
                    b_next.click(_guard(lambda *a: show(*a[:-1], (a[-1] or 1) + 1)), inputs + [b_page], outs,
                                 api_name=False)
                    b_prev.click(_guard(lambda *a: show(*a[:-1], max(1, (a[-1] or 1) - 1))), inputs + [b_page],
                                 outs, api_name=False)
                    gallery.select(on_select, [page_rows], [detail], api_name=False)
                    demo.load(_guard(lambda *a: show(*a, 1)), inputs, outs, api_name=False)

            # ------------------------------------------------------------------ Review
            with gr.Tab("Review", id="review"):
                if state.queue is None:
                    gr.Markdown("Start the app with `--dataset OUTPUT_DIR_OR_HUB_ID` to review an annotated output.")
                else:
                    with gr.Row():
                        with gr.Column(scale=1):
                            r_image = gr.Image(label="Image", type="pil", height=320, interactive=False,
                                               elem_id="review-image")
                        with gr.Column(scale=2):
                            r_card = gr.HTML(elem_id="review-card")
                            with gr.Row():
                                r_acc = gr.Button("Accept (a)", variant="primary", elem_id="review-accept")
                                r_rej = gr.Button("Reject (r)", variant="stop", elem_id="review-reject")
                                r_skip = gr.Button("Skip (s)", elem_id="review-skip")
                            with gr.Row():
                                r_label = gr.Dropdown(label="Right label", choices=[], elem_id="review-label")
                                r_cor = gr.Button("Correct (c)", elem_id="review-correct")
                    r_status = gr.Markdown(elem_id="review-status")
                    with gr.Row():
                        r_train = gr.Button("Continue the policy from the log and re-score the queue",
                                            elem_id="review-retrain")
                    r_train_out = gr.Markdown(elem_id="review-train-status")
                    r_token = gr.State("")
                    r_skipped = gr.State([])

                    def load_next(skipped):
                        items = state.next_items(1, skip=skipped)
                        if not items:
                            return (None, "<div class='ca-card'>The queue is empty.</div>", "",
                                    gr.update(choices=[], value=None), _status_md(state))
                        it = items[0]
                        attr = schema[it.attribute]
                        img = None
                        if it.row is not None:
                            img = store.image_of(store.read_rows([it.row], ["path"])[0], it.row)
                        # multi-label: start from the policy's set, for the reviewer to edit
                        value = [n for n, p in (it.probabilities or {}).items() if p >= attr.threshold] \
                            if attr.multi_label else None
                        return (img, render_item(state, it), it.token,
                                gr.update(choices=attr.label_names, value=value, multiselect=attr.multi_label),
                                _status_md(state))

                    def decide(verdict):
                        def fn(token, label, skipped):
                            if not token:
                                return load_next(skipped)
                            try:
                                state.decide(token, verdict, label)
                            except UserError as exc:
                                raise gr.Error(str(exc)) from exc
                            return load_next(skipped)
                        return fn

                    def skip(token, skipped):
                        skipped = list(skipped or []) + ([token] if token else [])
                        return (*load_next(skipped), skipped)

                    def retrain(skipped):
                        try:
                            info = state.retrain()
                        except UserError as exc:
                            raise gr.Error(str(exc)) from exc
                        text = (f"trained **{info['policy_version']}** on {info['events']} events "
                                f"({info['images']} images) in {info['seconds']}s, saved to `{info['saved_to']}`; "
                                "the queue is re-scored")
                        return (*load_next(skipped), text)

                    r_outs = [r_image, r_card, r_token, r_label, r_status]
                    r_acc.click(decide("accept"), [r_token, r_label, r_skipped], r_outs, api_name=False)
                    r_rej.click(decide("reject"), [r_token, r_label, r_skipped], r_outs, api_name=False)
                    r_cor.click(decide("correct"), [r_token, r_label, r_skipped], r_outs, api_name=False)
                    r_skip.click(skip, [r_token, r_skipped], r_outs + [r_skipped], api_name=False)
                    r_train.click(retrain, [r_skipped], r_outs + [r_train_out], api_name=False)
                    demo.load(_guard(load_next), [r_skipped], r_outs, api_name=False)

        # ---------------------------------------------------------------------- API-only endpoints
        # Hidden components carry the values; each endpoint's parameter names and defaults come from its
        # function's signature (a parameter whose default is None is optional, as is one whose component has a
        # value), so a required parameter's component has no value.
        with gr.Column(visible=False):
            api_image = gr.Image(type="filepath", label="image")
            api_tags = gr.Textbox(label="tags", value=None)
            api_json = gr.JSON()
            api_n = gr.Number(value=1, precision=0, label="n")
            api_token = gr.Textbox(label="token", value=None)
            api_verdict = gr.Textbox(label="verdict", value=None)
            api_label = gr.Textbox(label="label", value=None)
            api_attr = gr.Textbox(label="attribute", value=None)
            api_upload = gr.Textbox(label="upload_id", value=None)
            api_btn = gr.Button("api")

        def annotate(image: str, tags: str | None = None) -> dict:
            """One image file in (and its tags or caption, optional); per attribute its fused label, confidence,
            every label's probability and each source's probabilities out."""
            if not image:
                raise UserError("give an image file")
            return state.annotate_json(image, tags or None)

        def annotate_feedback(upload_id: str, attribute: str, verdict: str, label: str | None = None) -> dict:
            """A decision on an annotated upload's label: accept, reject, or correct (to ``label``)."""
            return state.decide_upload(upload_id, attribute, verdict, _labels(label))

        def review_next(n: int = 1) -> list:
            """The next ``n`` items of the review queue."""
            return [it.public() for it in state.next_items(int(n or 1))]

        def review_decide(token: str, verdict: str, label: str | None = None) -> dict:
            """A decision on a review item: accept, reject, or correct (to ``label``)."""
            return state.decide(token, verdict, _labels(label))

        def retrain() -> dict:
            """Continue the policy from the feedback log; the new version annotates from now on."""
            return state.retrain()

        def status() -> dict:
            """The log's size, the queue's, the policy version and the warnings."""
            return state.status()

        api_btn.click(_guard(annotate), [api_image, api_tags], api_json, api_name="annotate")
        api_btn.click(_guard(review_next), [api_n], api_json, api_name="review_next")
        api_btn.click(_guard(review_decide), [api_token, api_verdict, api_label], api_json, api_name="review_decide")
        api_btn.click(_guard(annotate_feedback), [api_upload, api_attr, api_verdict, api_label], api_json,
                      api_name="annotate_feedback")
        api_btn.click(_guard(retrain), None, api_json, api_name="retrain")
        api_btn.click(_guard(status), None, api_json, api_name="status")
    return demo


def launch(state: AppState, port: int = 7860, host: str = "127.0.0.1", block: bool = True, quiet: bool = False,
           auth: tuple[str, str] | None = None, insecure: bool = False):
    """Serve the app; returns ``(demo, url)`` (with ``block=False`` the server runs in a background thread).
    ``auth``: the (user, password) the page's login and API clients must give (see :mod:`.serving`); a ``host``
    other than loopback without it is refused unless ``insecure``. Never through a public share link (Gradio would
    make one with ``GRADIO_SHARE=true`` or in Colab)."""
    check_serving(host, auth, insecure)
    demo = build_ui(state)
    demo.queue(default_concurrency_limit=4)
    _, url, _ = demo.launch(server_name=host, server_port=int(port), prevent_thread_lock=not block, quiet=quiet,
                            share=False, ssr_mode=False, show_error=True, css=CSS, head=KEYBOARD_JS,
                            footer_links=["api"], auth=auth, auth_message="charattr-hf review app" if auth else None)
    return demo, url


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
