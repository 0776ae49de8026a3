"""The fusion policy's model card, rendered with ``huggingface_hub``.

The template is ``charattr_hf/assets/model_card.md`` (the repository's top-level ``model_card.md`` is a link to
it, so the file people edit is the one wheels install): a Jinja template that
:meth:`huggingface_hub.ModelCard.from_template` fills. Its YAML header is ``{{ card_data }}``, a
:class:`~huggingface_hub.ModelCardData` whose ``eval_results`` are the policy's measured accuracy and calibration
error per attribute, so the Hub shows them (``model-index``). The tables in the body come from
:func:`~charattr_hf.markdown.markdown_table`.
"""

from __future__ import annotations

from importlib import resources
from typing import Any, Mapping, Sequence

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ...markdown import markdown_table
from .configuration_fusion import CharattrFusionConfig

__all__ = ["MODEL_CARD_TEMPLATE", "render_model_card", "render_metrics_table", "render_round_changes", "card_data",
           "eval_results"]

#: The card template: ``charattr_hf/assets/<this name>``, a package resource.
MODEL_CARD_TEMPLATE = "model_card.md"
#: Method name of the policy itself in ``config.eval_results`` (the training recipe's name for it).
POLICY_METHOD = "policy"
#: Hub tags every card carries.
CARD_TAGS = ("charattr-hf", "fusion-policy", "image-annotation", "contextual-bandit")


def _template_text() -> str:
    return (resources.files("charattr_hf") / "assets" / MODEL_CARD_TEMPLATE).read_text(encoding="utf-8")


def _overall(records: Sequence[Mapping[str, Any]] | None) -> list[Mapping[str, Any]]:
    """The records measured on all held-out rows (not on one style)."""
    return [r for r in (records or []) if r.get("style") in (None, "all")]


def _mean(values: Sequence[Any]) -> float | None:
    kept = [float(v) for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def render_metrics_table(records: Sequence[Mapping[str, Any]] | None, digits: int = 1) -> str:
    """Markdown table of measured results: one row per attribute (plus the mean), one column pair
    (accuracy %, ECE) per method. ``records`` are ``{"attribute", "method", "accuracy", "ece", "n"}`` dicts
    (``accuracy`` and ``ece`` as fractions); records with a ``style`` other than None are left out."""
    rows = _overall(records)
    if not rows:
        return "_No evaluation results recorded yet: train with an evaluation split to fill this table._"
    methods = list(dict.fromkeys(str(r["method"]) for r in rows))
    attributes = list(dict.fromkeys(str(r["attribute"]) for r in rows))
    table = {(str(r["attribute"]), str(r["method"])): r for r in rows}
    counts: dict[str, int] = {}
    for r in rows:
        if r.get("n") is not None:
            counts[str(r["attribute"])] = max(counts.get(str(r["attribute"]), 0), int(r["n"]))

    def pct(value: Any) -> str | None:
        return None if value is None else f"{float(value) * 100.0:.{digits}f}"

    def ece(value: Any) -> str | None:
        return None if value is None else f"{float(value):.3f}"

    body = []
    for a in attributes:
        cells = []
        for m in methods:
            r = table.get((a, m), {})
            cells += [pct(r.get("accuracy")), ece(r.get("ece"))]
        body.append([a, counts.get(a, ""), *cells])
    mean_cells = []
    for m in methods:
        sel = [table[(a, m)] for a in attributes if (a, m) in table]
        mean_cells += [pct(_mean([r.get("accuracy") for r in sel])), ece(_mean([r.get("ece") for r in sel]))]
    body.append(["**mean**", "", *mean_cells])
    header = ["attribute", "n", *(f"{m} {kind}" for m in methods for kind in ("acc %", "ECE"))]
    return markdown_table(header, body, align="lr", missing="–")


def eval_results(
    config: CharattrFusionConfig, method: str = POLICY_METHOD, dataset_name: str | None = None
) -> list[EvalResult]:
    """The policy's measured accuracy and ECE per attribute (``config.eval_results`` rows of ``method`` on all
    held-out rows) as Hub ``EvalResult`` entries, one task and dataset: what the card's ``model-index`` holds."""
    rounds = list(config.training_info or [])
    data = dataset_name or next((str(r["data"]) for r in reversed(rounds) if r.get("data")), "") or "held-out images"
    out: list[EvalResult] = []
    for r in _overall(config.eval_results):
        if str(r.get("method")) != method:
            continue
        for metric, value in (("accuracy", r.get("accuracy")), ("ece", r.get("ece"))):
            if value is None:
                continue
            out.append(
                EvalResult(
                    task_type="image-classification",
                    task_name="character attribute fusion",
                    dataset_type=data,
                    dataset_name=data,
                    dataset_split="held out by id",
                    metric_type=metric,
                    metric_name=f"{r['attribute']} {'accuracy' if metric == 'accuracy' else 'ECE (15 bins)'}",
                    metric_config=str(r["attribute"]),
                    metric_value=float(value),
                )
            )
    return out


def card_data(config: CharattrFusionConfig, model_id: str, tags: Sequence[str] = ()) -> ModelCardData:
    """The card's YAML header: library, licence, tags and the measured ``eval_results``."""
    return ModelCardData(
        library_name="transformers",
        license="apache-2.0",
        tags=list(dict.fromkeys([*CARD_TAGS, *tags])),
        model_name=model_id,
        eval_results=eval_results(config) or None,
    )


def _training_data(rounds: Sequence[Mapping[str, Any]]) -> str:
    if not rounds:
        return "_Untrained: this policy has not been trained yet (it is the equal-weight geometric mean)._"
    rows = [[i, r.get("kind"), r.get("images"), r.get("events"), r.get("data") or None, r.get("seed"),
             r.get("policy_version")] for i, r in enumerate(rounds, 1)]
    table = markdown_table(
        ["round", "kind", "training images", "events", "data", "seed", "policy version"], rows, align="llrrlrl"
    )
    text = (table + "\n\nTraining images: the rows trained on, after the evaluation hold-out and the early-stopping "
            "validation share are set aside.")
    last = len(rounds) - next((i for i, r in enumerate(reversed(rounds)) if r.get("before_after")), len(rounds))
    if last:
        text += "\n\n" + render_round_changes(rounds[last - 1], last)
    return text


def render_round_changes(round_info: Mapping[str, Any], number: int | None = None) -> str:
    """What a feedback round changed, per group of the images it was given (its ``before_after`` rows, see
    :func:`charattr_hf.fusion_training.round_report`), as Markdown: a sentence naming the data, then a table."""
    rows = list(round_info.get("before_after") or [])
    if not rows:
        return ""

    def pct(value: Any) -> str | None:
        return None if value is None else f"{100.0 * float(value):.1f}"

    labelled = any(r.get("accuracy_before") is not None for r in rows)
    header = ["images", "count", "events", "answers changed %", "est. accuracy before %", "after %",
              "held-out events"]
    if labelled:
        header += ["accuracy before %", "after %"]
    body = []
    for r in rows:
        line = [f"**{r['group']}**" if r["group"] == "all" else r["group"], r.get("images"), r.get("events"),
                pct(r.get("changed")), pct(r.get("estimated_before")), pct(r.get("estimated_after")),
                r.get("held_out_events")]
        if labelled:
            line += [pct(r.get("accuracy_before")), pct(r.get("accuracy_after"))]
        body.append(line)
    name = f"round {number}" if number else "the last feedback round"
    intro = (f"Before -> after of {name} (policy `{round_info.get('policy_version', '')}`) on the data it was given: "
             f"{round_info.get('given_images', '?')} images of `{round_info.get('data') or 'unnamed data'}`, "
             f"{round_info.get('events', '?')} reviewer events on {round_info.get('images', '?')} of them"
             f"{_anchor_sentence(round_info)}")
    notes = ("`answers changed`: share of the answers (image x attribute) whose label changed, with no labels "
             "needed; on images without events it is what the round moved that nobody asked for. `est. accuracy`: "
             "of the top label of the single-label attributes, estimated from the held-out reviewer events that "
             "showed it (importance weighted, weights clipped; empty without such events; the same events chose "
             "when training stopped, so the after figure leans optimistic).")
    if labelled:
        notes += (" `accuracy`: against the labels the data carries (never used for training), mean over attributes, "
                  "on every image given, the reviewed ones included.")
    return f"{intro}\n\n{markdown_table(header, body, align='lr', missing='–')}\n\n{notes}"


def _anchor_sentence(round_info: Mapping[str, Any]) -> str:
    """What held the earlier answers on the images without events in a feedback round, from what its
    ``training_info`` records (``continued``, ``anchor_rows``, ``anchor_weight_set``, ``anchored_images``)."""
    anchored = int(round_info.get("anchored_images") or 0)
    continued = round_info.get("continued")
    if continued is False:
        return "; a fresh policy, so there were no earlier answers to keep."
    if anchored:
        how = (", all alike." if round_info.get("anchor_rows") == "all"
               else ", each weighted by how unlike the reviewed images it looks.")
        return f"; the earlier answers were kept on the {anchored} images without events{how}"
    if continued is None:  # recorded before these keys existed
        return "."
    if float(round_info.get("anchor_weight_set") or 0.0) <= 0.0:
        return "; the anchor was off (`anchor_weight` 0), so nothing held the earlier answers on the images without " \
               "events."
    try:
        without = int(round_info["given_images"]) - int(round_info["images"])
    except (KeyError, TypeError, ValueError):
        without = 0
    if without <= 0:
        return "; no image without events was given, so nothing held the earlier answers elsewhere."
    return (f"; nothing held the earlier answers on the {without} images without events (too few of them, or all "
            "like the reviewed images).")


def template_values(config: CharattrFusionConfig, model_id: str) -> dict[str, str]:
    """The values the template's ``{{ name }}`` placeholders are filled with (besides the card data)."""
    rounds = list(config.training_info or [])
    command = next((r.get("command") for r in reversed(rounds) if r.get("command")), None)
    context = [f"`quality` ({', '.join(config.quality_fields)})", f"`flags` ({len(config.flag_vocab)} known flags)"]
    if config.embedding_dim:
        context.append(f"`embedding` ({config.embedding_dim} dims, projected to {config.embedding_proj_dim})")
    attributes = markdown_table(
        ["attribute", "kind", "labels"],
        [[a["name"], f"multi-label (threshold {a['threshold']:g})" if a["multi_label"] else "single-label",
          ", ".join(a["labels"])] for a in config.attributes],
    )
    return {
        "model_id": model_id,
        "policy_version": config.policy_version or "unversioned",
        "schema_name": config.schema_name or "custom",
        "schema_fingerprint": config.schema_fingerprint or "n/a",
        "sources": ", ".join(f"`{s}`" for s in config.sources),
        "context_inputs": ", ".join(context),
        "attributes_table": attributes,
        "hidden_size": str(config.hidden_size),
        "training_data": _training_data(rounds),
        "metrics_table": render_metrics_table(config.eval_results),
        "train_command": command
        or "accelerate launch recipes/train_fusion.py --dataset <annotated dataset with truth> --output_dir <dir>",
    }


def render_model_card(
    config: CharattrFusionConfig,
    model_id: str | None = None,
    template: str | None = None,
    tags: Sequence[str] = (),
) -> str:
    """The model card (``README.md``) of a policy with this config: the packaged template (or ``template``, a
    template string) rendered by ``ModelCard.from_template``. A placeholder the template uses and nothing fills
    is an error (``KeyError``), not an empty string."""
    import jinja2
    from jinja2 import meta

    model_id = model_id or config.name_or_path or "charattr-fusion-policy"
    text = template if template is not None else _template_text()
    data = card_data(config, model_id, tags)
    values = template_values(config, model_id)
    known = {"card_data", *data.to_dict(), *values}
    used = meta.find_undeclared_variables(jinja2.Environment().parse(text))
    unknown = sorted(used - known)
    if unknown:
        raise KeyError(f"model card template uses unknown placeholders {unknown}; known: {sorted(known)}")
    card = ModelCard.from_template(data, template_str=text, **values)
    return str(card) if str(card).endswith("\n") else str(card) + "\n"
