from datasets import ClassLabel, Dataset, Features, List, Value

from charattr_hf.summary import format_summary, summarize


def test_summary_counts_and_compares_truth_by_label_name(tmp_path):
    # truth typed with another label order than the predictions: must be compared by name
    feats = Features(
        {
            "error": Value("string"),
            "flags": List(Value("string")),
            "hair": ClassLabel(names=["black", "red", "blue"]),
            "hair_confidence": Value("float32"),
            "acc": List(ClassLabel(names=["glasses", "hat"])),
            "acc_confidence": List(Value("float32")),
            "truth": {"hair": ClassLabel(names=["blue", "black", "red"]), "acc": List(ClassLabel(names=["hat", "glasses"]))},
        }
    )
    rows = [
        # prediction red (1) vs truth red (2): right; glasses (0) vs truth glasses (1): right
        dict(error=None, flags=["dark"], hair=1, hair_confidence=0.9, acc=[0], acc_confidence=[0.8],
             truth={"hair": 2, "acc": [1]}),
        # black vs truth blue: wrong; [] vs [hat]: wrong
        dict(error=None, flags=[], hair=0, hair_confidence=0.5, acc=[], acc_confidence=[], truth={"hair": 0, "acc": [0]}),
        # errored row: no prediction counts as wrong
        dict(error="unreadable image", flags=[], hair=None, hair_confidence=None, acc=None, acc_confidence=None,
             truth={"hair": 1, "acc": []}),
    ]
    path = tmp_path / "d.parquet"
    Dataset.from_list(rows, features=feats).to_parquet(str(path))
    stats = summarize([path])
    assert stats["rows"] == 3 and stats["errors"] == 1 and stats["flagged_rows"] == 1
    assert stats["flags"] == {"dark": 1}
    hair = stats["attributes"]["hair"]
    assert hair["accuracy"] == 1 / 3 and hair["annotated"] == 2 and hair["evaluated"] == 3
    assert abs(hair["mean_confidence"] - 0.7) < 1e-6
    assert stats["attributes"]["acc"]["accuracy"] == 1 / 3
    text = format_summary(stats, images_per_second=12.5)
    assert "12.5 images/s" in text and "hair" in text and "33.3%" in text


def test_the_summary_says_what_an_alarming_flag_means():
    """#21: the synthetic sample's 64 px images are all low_resolution; the summary says what the flag measures (a
    fixed size: the fusion policies read the flag) and that flagged rows keep their labels."""
    stats = {"rows": 256, "errors": 0, "flagged_rows": 256, "flags": {"low_resolution": 256, "dark": 3}}
    text = format_summary(stats)
    assert "flagged: 256 (quality hints: the rows keep their labels)" in text
    assert "low_resolution 256 (shorter side under 128 px), dark 3" in text
    assert "quality hints" not in format_summary({"rows": 2, "errors": 0, "flagged_rows": 0})


def test_demo_models_on_real_images_are_named_in_the_summary_and_the_card(tmp_path):
    """The demo model and the demo tagger on real images (no ground truth): each one's warning in the summary, the
    run's description and the card, and the demo tagger in the card's table of how the labels were made."""
    import shutil
    from pathlib import Path

    from charattr_hf.api import annotate_to_disk
    from charattr_hf.options import DEMO_MODEL_WARNING, DEMO_TAGGER_WARNING, InputSpec
    from charattr_hf.sources.tagger.stage import demo_tagger_dir

    if demo_tagger_dir() is None:
        import pytest

        pytest.skip("this checkout ships no demo tagger")
    images = tmp_path / "photos"
    images.mkdir()
    for name in ("sdeval-1.jpg", "ukbench09012.jpg"):  # real images (tests/data/app/LICENSE-NOTES.md)
        shutil.copy(Path(__file__).parent / "data" / "app" / name, images / name)
    out = tmp_path / "out"
    _, pipeline = annotate_to_disk(str(images), out, tagger="demo", progress=False, num_proc=1, use_cache=False)
    assert pipeline.description["warnings"] == [DEMO_MODEL_WARNING, DEMO_TAGGER_WARNING]
    card = (out / "README.md").read_text()
    assert f"> **Warning**: {DEMO_MODEL_WARNING}." in card and f"> **Warning**: {DEMO_TAGGER_WARNING}." in card
    table = card.split("## How the labels were made", 1)[1].split("\n## ", 1)[0]
    assert "| tagger (timm) | the demo tagger shipped with charattr-hf" in table
    assert "| clip (open_clip) | the demo CLIP shipped" in table and "fusion (rule)" in table
    text = format_summary({"rows": 2, "errors": 0, "attributes": {}}, warnings=pipeline.description["warnings"])
    assert text.splitlines()[:2] == [f"WARNING: {DEMO_MODEL_WARNING}", f"WARNING: {DEMO_TAGGER_WARNING}"]
    # on the synthetic sample (ground truth: the drawings the demo models know) nothing to warn about
    _, sample = annotate_to_disk(None, tmp_path / "sample", input_spec=InputSpec(sample_size=4), tagger="demo",
                                 progress=False, num_proc=1, use_cache=False)
    assert "warnings" not in sample.description
    assert "> **Warning**" not in (tmp_path / "sample" / "README.md").read_text()
