"""Prompts of Stable Diffusion renders as tags evidence (#17).

Real files (tests/data/sd, with their licence note) of AUTOMATIC1111 (PNG text chunk and JPEG EXIF), NovelAI,
Fooocus and ComfyUI give their positive prompt and never their negative one; the layouts no real file here shows
(NovelAI's newer Comment, ComfyUI through a ControlNet node, Flux without a negative, WebP EXIF) are built byte
for byte as those tools write them. Prompt syntax is read as the renderer reads it, and a folder of renders with no
tags at all is annotated from the prompts, a person's ``.txt`` winning over the render's own prompt.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from charattr_hf.prompts import (comfyui_prompts, embedded_prompt, looks_like_prompt, parse_prompt, positive_prompt,
                                 reads_as_prose)
from charattr_hf.stages.decode import DecodeStage
from charattr_hf.sources.tags.stage import TagStage, split_tags

DATA = Path(__file__).parent / "data" / "sd"
BIKINI = DATA / "bikini-0.png"


def _open(path: Path) -> Image.Image:
    im = Image.open(path)
    im.load()
    return im


def _png(**chunks: str) -> Image.Image:
    """A small PNG with the given text chunks, reopened as a file reader sees it."""
    info = PngImagePlugin.PngInfo()
    for key, value in chunks.items():
        info.add_text(key, value)
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 120, 90)).save(buf, "PNG", pnginfo=info)
    return _open(io.BytesIO(buf.getvalue()))  # type: ignore[arg-type]


def _exif_file(fmt: str, exif: Image.Exif) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (90, 120, 200)).save(buf, fmt, exif=exif)
    return buf.getvalue()


def _top(stage: TagStage, row: dict, attribute: str) -> "str | None":
    probs = row[attribute]
    return None if probs is None else stage.schema[attribute].label_names[int(np.argmax(probs))]


@pytest.fixture(scope="module")
def stage():
    return TagStage("default")


# --------------------------------------------------------------------------------------------- the A1111 layout
def test_parse_prompt_splits_a_real_a1111_parameters_text():
    text = _open(BIKINI).info["parameters"]
    parsed = parse_prompt(text)
    assert parsed.positive.startswith("best quality, masterpiece") and parsed.positive.endswith("light smile")
    assert parsed.negative.startswith("{worst quality, low quality:1.40}") and "sketch" in parsed.negative
    assert parsed.settings["Steps"] == "30" and parsed.settings["Sampler"] == "DPM++ 2M Karras"
    assert parsed.settings["Model"] == "Meina/MeinaMix_V11" and looks_like_prompt(text)
    assert positive_prompt(text) == parsed.positive and "Negative prompt" not in positive_prompt(text)


@pytest.mark.parametrize("text, positive, negative", [
    # the negative prompt runs over several lines, up to the settings line
    ("1girl,\nred hair\nNegative prompt: sketch,\nmonochrome\nSteps: 20, Sampler: Euler a, CFG scale: 7",
     "1girl,\nred hair", "sketch,\nmonochrome"),
    # an empty positive prompt (A1111 starts with the negative line then)
    ("Negative prompt: sketch\nSteps: 20, Sampler: Euler a, Seed: 1", "", "sketch"),
    # settings without a negative prompt; CRLF line ends
    ("1girl, smile\r\nSteps: 28, Sampler: DPM++ 2M, CFG scale: 5.5, Size: 832x1216", "1girl, smile", None),
    # quoted settings values hold commas
    ('1girl\nNegative prompt: bad\nSteps: 9, Sampler: Euler, Lora hashes: "a: 1, b: 2", Seed: 3', "1girl", "bad"),
])
def test_parse_prompt_layouts(text, positive, negative):
    parsed = parse_prompt(text)
    assert (parsed.positive, parsed.negative) == (positive, negative) and parsed.settings.get("Steps")


@pytest.mark.parametrize("text", [
    "1girl, long hair, blue eyes",
    "artist:someone, character:hatsune miku, copyright:vocaloid",  # key: value pairs, but no Steps
    "1girl\nsolo\nlong hair",
    "steps, 1girl, staircase",
])
def test_texts_that_are_not_a_parameters_block_are_left_as_they_are(text):
    assert not looks_like_prompt(text) and positive_prompt(text) == text and parse_prompt(text).negative is None


def test_prose_prompts_and_tag_lists_are_told_apart():
    assert reads_as_prose("a photo of a girl with long blonde hair standing on a beach at sunset")
    assert reads_as_prose("photograph of victorian woman with wings, sky clouds, meadow grass")
    assert not reads_as_prose(positive_prompt(_open(BIKINI).info["parameters"]))
    assert not reads_as_prose("1girl, solo, hands on own hips, long hair, blue eyes, smile")


# --------------------------------------------------------------------------------------------- prompt syntax
@pytest.mark.parametrize("text, tags", [
    ("(blonde hair:1.2), ((smile)), [hat], {glasses:1.15}, {{{red eyes}}}",
     ["blonde_hair", "smile", "hat", "glasses", "red_eyes"]),  # weights and emphasis
    ("{worst quality, low quality:1.40}, {starry sky:1.10}, 1girl", ["starry_sky", "1girl"]),  # a weighted group
    ("saber \\(fate\\), 1girl", ["saber_(fate)", "1girl"]),  # escaped brackets are literal
    ("<lora:add_detail:0.8>, 1girl, <lyco:x:1.0> long hair", ["1girl", "long_hair"]),  # extra networks
    ("1girl, smile BREAK blue eyes AND red hat", ["1girl", "smile", "blue_eyes", "red_hat"]),  # BREAK, AND
    ("score_9, score_8_up, masterpiece, best quality, absurdres, rating_safe, source_anime, very aesthetic, newest, "
     "1girl", ["1girl"]),  # quality, score, rating and date tags
    ("[cat ears:fox ears:0.4], 1girl, [hat::0.5]", ["fox_ears", "1girl"]),  # prompt editing: "to" is drawn
    ("[red hair|blue hair]", ["red_hair", "blue_hair"]),  # alternation: both
    ("1.5::blue hair::, 1girl", ["blue_hair", "1girl"]),  # NovelAI v4 emphasis
    ("(hat:-1), {glasses:0}, -1::scarf::, (smile:0.5), 1girl", ["smile", "1girl"]),  # weight <= 0: left out
    ("embedding:EasyNegative, 1girl", ["1girl"]),  # ComfyUI embedding call
    ("watercolor_(medium), (blush:1.1)", ["watercolor_(medium)", "blush"]),  # a qualifier stays
])
def test_prompt_syntax(text, tags):
    assert split_tags(text) == tags


def test_negative_prompt_in_a_tags_column_is_never_positive_evidence(stage):
    """The real render's parameters text given as the tags column (metadata.jsonl holds it whole): its negative
    prompt says ``{zombie, sketch, interlocked fingers, comic:1.10}``, which made every such row a 0.9 sketch."""
    text = _open(BIKINI).info["parameters"]
    assert "sketch" in parse_prompt(text).negative and "sketch" not in split_tags(text)
    assert not {"sketch", "comic", "cropped", "signature", "steps", "seed"} & set(split_tags(text))
    for row in (stage.row(text), stage.row(None, text)):  # as tags and as a caption
        assert row["art_style"] is None  # the positive prompt names no style; the negative's sketch is not one
    row = stage.row(text)
    assert (_top(stage, row, "hair_color"), _top(stage, row, "eye_color"), _top(stage, row, "hair_length")) == \
        ("grey", "blue", "long")
    assert row["clothing"][stage.schema["clothing"].index("swimsuit")] == stage.tag_present


# --------------------------------------------------------------------------------------------- real files
REAL = {
    # file: (kind, in the positive prompt, in the negative prompt only)
    "bikini-0.png": ("a1111", "{bikini:1.30}", "sketch"),
    "automatic1111_cropped.png": ("a1111", "photo of a duck", "monochrome"),
    "automatic1111_cropped.jpg": ("a1111", "photo of a duck", "monochrome"),  # EXIF UserComment, UTF-16 BE
    "novelai1_cropped.png": ("novelai", "cat, space, icon", "lowres"),
    "fooocus1_cropped.png": ("fooocus", "a smiling goldfish", "worst quality"),
    "img2img_cropped.png": ("comfyui", "victorian woman with wings", "watermark"),
    "noisy_latents_3_subjects_cropped.png": ("comfyui", "fennec ears", "sketch"),
    "night_evening_day_morning_cropped.png": ("comfyui", "(night:1.3)", "(hands)"),
}


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_renders_give_their_positive_prompt(name):
    kind, positive, negative_only = REAL[name]
    text, got_kind = embedded_prompt(_open(DATA / name))
    assert got_kind == kind and positive in text and negative_only not in text
    assert "Steps" not in text and "Negative prompt" not in text


def test_comfyui_positive_prompt_is_followed_through_conditioning_nodes():
    """Sampler 3's positive input is ConditioningCombine(Combine(SetArea(night), SetArea(evening)), Combine(
    SetArea(morning), day)); sampler 24's is one encoder. Both samplers' negatives are the same text."""
    graph = json.loads(_open(DATA / "night_evening_day_morning_cropped.png").info["prompt"])
    positive, negative = comfyui_prompts(graph)
    assert len(positive) == 6 and len(negative) == 1 and negative[0].startswith("(hands), text, error")
    for part in ("(night:1.3)", "(evening:1.2)", "(daytime:1.2)", "morning sky", "(realistic:1.2)",
                 "(masterpiece) (best quality) beautiful landscape"):
        assert sum(part in p for p in positive) == 1, part


def test_comfyui_graph_with_five_samplers_keeps_every_positive_and_no_negative(stage):
    graph = json.loads(_open(DATA / "noisy_latents_3_subjects_cropped.png").info["prompt"])
    positive, negative = comfyui_prompts(graph)
    encoders = {k for k, v in graph.items() if v["class_type"] == "CLIPTextEncode"}
    assert len(positive) + len(negative) == len({graph[k]["inputs"]["text"] for k in encoders})
    assert all("sketch" not in p and "monochrome" not in p for p in positive)
    assert any("sketch" in n and "monochrome" in n for n in negative)
    row = stage.row(embedded_prompt(_open(DATA / "noisy_latents_3_subjects_cropped.png"))[0])
    assert _top(stage, row, "art_style") not in ("sketch", "monochrome")


# --------------------------------------------------------------------------------------------- built layouts
def _encode(text: str, clip=("4", 1)) -> dict:
    return {"inputs": {"text": text, "clip": list(clip)}, "class_type": "CLIPTextEncode"}


def test_comfyui_controlnet_node_is_followed_by_its_output_slot():
    """ControlNetApplyAdvanced passes both conditionings on: output 0 is positive, 1 negative (ComfyUI API
    format: inputs that link to another node are ``[node id, output slot]``)."""
    graph = {
        "3": {"inputs": {"seed": 1, "steps": 20, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal",
                         "denoise": 1.0, "model": ["4", 0], "positive": ["10", 0], "negative": ["10", 1],
                         "latent_image": ["5", 0]}, "class_type": "KSampler"},
        "4": {"inputs": {"ckpt_name": "model.safetensors"}, "class_type": "CheckpointLoaderSimple"},
        "5": {"inputs": {"width": 512, "height": 512, "batch_size": 1}, "class_type": "EmptyLatentImage"},
        "6": _encode("1girl, red hair, smile"),
        "7": _encode("sketch, monochrome, lowres"),
        "10": {"inputs": {"strength": 1.0, "start_percent": 0.0, "end_percent": 1.0, "positive": ["6", 0],
                          "negative": ["7", 0], "control_net": ["11", 0], "image": ["12", 0]},
               "class_type": "ControlNetApplyAdvanced"},
        "11": {"inputs": {"control_net_name": "openpose.safetensors"}, "class_type": "ControlNetLoader"},
        "12": {"inputs": {"image": "pose.png"}, "class_type": "LoadImage"},
    }
    assert comfyui_prompts(graph) == (["1girl, red hair, smile"], ["sketch, monochrome, lowres"])
    # a text reached from a negative input is never positive, even when a positive input reaches it too
    graph["3"]["inputs"]["positive"] = ["13", 0]
    graph["13"] = {"inputs": {"conditioning_1": ["6", 0], "conditioning_2": ["7", 0]},
                   "class_type": "ConditioningCombine"}
    assert comfyui_prompts(graph)[0] == ["1girl, red hair, smile"]


def test_comfyui_text_from_a_string_node_and_flux_without_negative():
    """Flux graphs have no ``positive`` input (BasicGuider takes ``conditioning``): every encoder's text is
    positive. The encoder's text may come from another node (PrimitiveString)."""
    graph = {
        "6": {"inputs": {"clip_l": "", "t5xxl": ["20", 0], "guidance": 3.5, "clip": ["11", 0]},
              "class_type": "CLIPTextEncodeFlux"},
        "20": {"inputs": {"value": "a girl with long blonde hair and green eyes, wearing a red dress"},
               "class_type": "PrimitiveString"},
        "22": {"inputs": {"model": ["12", 0], "conditioning": ["6", 0]}, "class_type": "BasicGuider"},
        "13": {"inputs": {"noise": ["25", 0], "guider": ["22", 0], "sampler": ["16", 0], "sigmas": ["17", 0],
                          "latent_image": ["27", 0]}, "class_type": "SamplerCustomAdvanced"},
    }
    assert comfyui_prompts(graph) == (["a girl with long blonde hair and green eyes, wearing a red dress"], [])


@pytest.mark.parametrize("graph", [
    {"1": {"inputs": {"positive": ["1", 0], "negative": ["1", 1]}, "class_type": "Loop"}},  # a cycle
    {"1": {"inputs": {"positive": ["9", 0]}, "class_type": "KSampler"}},  # a link to a node that is not there
    {"1": "not a node", "2": {"inputs": "nor inputs", "class_type": "CLIPTextEncode"}},
])
def test_comfyui_malformed_graphs_give_nothing_and_do_not_raise(graph):
    assert comfyui_prompts(graph) == ([], [])


def test_novelai_comment_prompt_wins_over_description():
    """Newer NovelAI images carry the prompt in ``Comment`` too (with ``uc``, the negative prompt)."""
    comment = {"prompt": "1girl, blue hair, {{smile}}", "steps": 28, "sampler": "k_euler_ancestral",
               "uc": "sketch, lowres, bad anatomy", "v4_prompt": {"caption": {"base_caption": "1girl, blue hair"}}}
    im = _png(Title="AI generated image", Description="an older copy of the prompt", Software="NovelAI",
              Source="NovelAI Diffusion V4 4F49EC75", Comment=json.dumps(comment))
    assert embedded_prompt(im) == ("1girl, blue hair, {{smile}}", "novelai")


def test_exif_user_comment_in_any_character_code():
    text = "1girl, red hair\nNegative prompt: sketch\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1"
    for fmt in ("JPEG", "WEBP"):
        for code, body in ((b"UNICODE\0", text.encode("utf-16-be")), (b"UNICODE\0", text.encode("utf-16-le")),
                           (b"ASCII\0\0\0", text.encode()), (b"\0" * 8, text.encode())):
            exif = Image.Exif()
            exif.get_ifd(0x8769)[0x9286] = code + body
            assert embedded_prompt(_open(io.BytesIO(_exif_file(fmt, exif)))) == ("1girl, red hair", "a1111"), \
                (fmt, code, body[:4])  # type: ignore[arg-type]


def test_comfyui_webp_keeps_its_graph_in_exif():
    """ComfyUI's WebP saver writes ``prompt:<graph>`` into EXIF Model (0x0110), the workflow into Make."""
    graph = {"3": {"inputs": {"positive": ["6", 0], "negative": ["7", 0]}, "class_type": "KSampler"},
             "6": _encode("1girl, pink hair"), "7": _encode("sketch")}
    exif = Image.Exif()
    exif[0x0110] = "prompt:" + json.dumps(graph)
    exif[0x010F] = "workflow:" + json.dumps({"nodes": []})
    assert embedded_prompt(_open(io.BytesIO(_exif_file("WEBP", exif)))) == ("1girl, pink hair", "comfyui")


@pytest.mark.parametrize("chunks, expected", [
    ({"parameters": "{not json"}, ("{not json", "a1111")),  # not JSON: A1111's plain text
    ({"parameters": '{"steps": 20}'}, None),  # JSON without a prompt
    ({"Software": "NovelAI", "Comment": "{broken"}, None),
    ({"Software": "NovelAI", "Comment": "{broken", "Description": "1girl"}, ("1girl", "novelai")),
    ({"prompt": '{"1": [}'}, None),
    ({"parameters": "   "}, None),
    ({"Description": "a photo I took", "Comment": "just a comment"}, None),  # not NovelAI's
])
def test_metadata_that_is_not_a_prompt_gives_none_and_never_raises(chunks, expected):
    assert embedded_prompt(_png(**chunks)) == expected


def test_plain_images_have_no_prompt():
    assert embedded_prompt(_png()) is None
    assert embedded_prompt(Image.new("RGB", (4, 4))) is None


# --------------------------------------------------------------------------------------------- decode and the stage
def test_decode_stage_reads_the_prompt_only_when_asked_and_never_for_a_broken_file():
    files = [BIKINI, DATA / "automatic1111_cropped.jpg", DATA / "img2img_cropped.png"]
    cells = [{"bytes": p.read_bytes(), "path": str(p)} for p in files]
    cells.append({"bytes": BIKINI.read_bytes()[:20_000], "path": "truncated.png"})
    plain = DecodeStage()(({"image": cells}))
    assert "_prompt" not in plain and "_prompt" not in DecodeStage().features()
    stage = DecodeStage(prompts=True)
    assert stage.fingerprint() != DecodeStage().fingerprint()
    out = stage({"image": cells})
    assert out["_prompt_kind"] == ["a1111", "a1111", "comfyui", None]
    assert out["_prompt"][0].startswith("best quality") and out["_prompt"][3] is None
    assert out["error"][:3] == [None] * 3 and out["error"][3].startswith("truncated image")
    for col in ("sha256", "quality", "signature"):
        assert out[col][:3] == plain[col][:3]  # the same decode otherwise


def test_tag_stage_precedence_and_tags_from(stage):
    bikini = positive_prompt(_open(BIKINI).info["parameters"])
    prose = "a photo of a girl with short red hair wearing glasses, smiling at the camera"
    batch = {
        "tags": ["1girl, black hair", None, None, "", None],
        "caption": [None, "a woman with white hair", None, None, None],
        "_prompt": [bikini, bikini, bikini, prose, None],
        "_prompt_kind": ["a1111", "a1111", "a1111", "comfyui", None],
    }
    out = stage(batch)
    assert out["tags_from"] == ["tags", "caption", "a1111", "comfyui", None]
    hair = [_top(stage, row, "hair_color") for row in out["probs_tags"]]
    assert hair == ["black", "white", "grey", "red", None]  # the row's own text wins over its image's prompt
    # prose is read as a caption: caption confidence, not tag confidence
    assert max(out["probs_tags"][3]["hair_color"]) == pytest.approx(stage.caption_confidence)
    assert max(out["probs_tags"][2]["hair_color"]) == pytest.approx(stage.tag_confidence)


def test_a_folder_of_renders_without_tags_is_annotated_from_their_prompts(tmp_path):
    """End to end through the library: an image folder of real renders and no tags column; one render has a
    person's ``.txt`` beside it, which wins over its embedded prompt."""
    from datasets import load_dataset

    from charattr_hf.api import annotate_to_disk
    from charattr_hf.pipeline import PipelineOptions

    folder = tmp_path / "renders"
    folder.mkdir()
    for name in ("bikini-0.png", "bikini-1.png", "novelai1_cropped.png", "img2img_cropped.png"):
        shutil.copy(DATA / name, folder / name)
    (folder / "bikini-1.txt").write_text("1girl, pink hair, school uniform")
    Image.new("RGB", (64, 64), (30, 160, 90)).save(folder / "plain.png")
    result, pipeline = annotate_to_disk(str(folder), tmp_path / "out", options=PipelineOptions(model=None),
                                        progress=False)
    assert pipeline.sources == ["tags"]
    ds = load_dataset(str(tmp_path / "out"), split="train")
    rows = {r["id"]: r for r in ds}
    assert {k: r["tags_from"] for k, r in rows.items()} == {
        "bikini-0.png": "a1111", "bikini-1.png": "tags", "novelai1_cropped.png": "novelai",
        "img2img_cropped.png": "comfyui", "plain.png": None}
    names = ds.features["hair_color"].names
    assert names[rows["bikini-0.png"]["hair_color"]] == "grey" and names[rows["bikini-1.png"]["hair_color"]] == "pink"
    assert rows["bikini-0.png"]["art_style"] is None  # its negative prompt's "sketch" is no evidence
    assert rows["plain.png"]["probs_tags"] is None or all(v is None for v in rows["plain.png"]["probs_tags"].values())
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["tags_from"] == {"a1111": 1, "tags": 1, "novelai": 1, "comfyui": 1, "None": 1}
    card = (tmp_path / "out" / "README.md").read_text()
    assert "1 row from embedded A1111 prompts" in card and "prompt embedded in the image" in card
