"""Sources as plugins (#9): a toy source registered from this file, as a user's module would, runs in the annotate
recipe (``--plugins tests.test_sources``, a subprocess, its CPU stage in the forkserver workers) and fusion
training takes its column; the registry's entry points, ``--sources`` and the built-in sources' options."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from charattr_hf.sources import BuildContext, Source, order_sources, register_source, registered_sources
from charattr_hf.stages.base import ERROR, Stage
from charattr_hf.stages.pixels import PixelSpec

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "annotate.py"


# ------------------------------------------------------------------------------ the toy source: all a user writes
@dataclass
class ToyOptions:
    toy_strength: float = field(default=1.0, metadata={"help": "How sure the toy source is of its guess.", "min": 0})


class ToyStage(Stage):
    """``probs_toy``: per attribute, the label picked by the image's mean brightness (a CPU stage: numpy only)."""

    name = "toy"
    cpu_bound = True

    def __init__(self, schema, strength: float, pixels: str):
        self.schema, self.strength, self.pixels = schema, float(strength), pixels

    def params(self) -> dict:
        return {"schema": self.schema.fingerprint(), "strength": self.strength}

    def features(self) -> dict:
        return {"probs_toy": self.schema.probs_feature()}

    def input_columns(self) -> list[str]:
        return [self.pixels]

    def process(self, batch):
        import numpy as np

        out = []
        for pixels, err in zip(batch[self.pixels], batch.get(ERROR) or [None] * len(batch[self.pixels])):
            if err is not None or pixels is None:
                out.append(None)
                continue
            brightness = np.frombuffer(pixels, np.uint8).mean() / 255.0
            row = {}
            for attr in self.schema:
                p = np.ones(attr.num_labels)
                p[min(int(brightness * attr.num_labels), attr.num_labels - 1)] += self.strength
                row[attr.name] = (p / p.sum() if not attr.multi_label else p / (1 + self.strength)).tolist()
            out.append(row)
        return {"probs_toy": out}


TOY_PIXELS = PixelSpec(8, resize="squash")


def build_toy(ctx: BuildContext, opts: ToyOptions) -> None:
    # pixels of its own size from the shared decode stage (one decode per image for every source)
    ctx.cpu.append(ToyStage(ctx.schema, opts.toy_strength, ctx.pixels(TOY_PIXELS)))
    ctx.description["toy"] = f"brightness, strength {opts.toy_strength}"


register_source(Source("toy", build_toy, options=ToyOptions, default=False))


# ------------------------------------------------------------------------------------------------------- tests
def run(*cmd, env=None, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *map(str, cmd)], capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                          env=env)


def test_a_plugin_source_runs_in_the_recipe_and_fusion_training_takes_its_column(tiny_clip_dir, tmp_path):
    import datasets

    from charattr_hf import synthetic
    from charattr_hf.api import annotate
    from charattr_hf.models.fusion import CharattrFusionModel

    sample = tmp_path / "sample.parquet"
    synthetic.generate(140, seed=3).to_parquet(str(sample))  # >= 64 rows per worker: the CPU part runs in workers
    out = tmp_path / "annotated"
    proc = run(RECIPE, "--plugins", "tests.test_sources", "--sources", "clip,tags,toy", "--toy_strength", "3",
               "--dataset", sample, "--model", f"local-dir:{tiny_clip_dir}", "--schema", "synthetic",
               "--output_dir", out, "--no_cache", "--quiet", "--num_proc", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sources: clip, tags, toy" in proc.stdout
    ds = datasets.load_dataset(str(out), split="train")
    assert len(ds) == 140 and "probs_toy" in ds.column_names and not any(c.startswith("_") for c in ds.column_names)
    first = ds[0]["probs_toy"]["hair_color"]  # the schema's shape: one probability per label
    assert len(first) == ds.features["probs_toy"]["hair_color"].length
    assert max(first) == pytest.approx(4 / (3 + len(first)))  # --toy_strength 3 reached the stage
    assert len({tuple(r["probs_toy"]["hair_color"]) for r in ds}) > 1  # it looked at the pixels

    spec = importlib.util.spec_from_file_location("train_fusion", ROOT / "recipes" / "train_fusion.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    saved = recipe.main(["--dataset", str(out), "--schema", "synthetic", "--output_dir", str(tmp_path / "policy"),
                         "--hidden_size", "16", "--max_epochs", "3"])
    policy = CharattrFusionModel.from_pretrained(saved)
    assert policy.config.sources == ["clip", "tags", "toy"]

    # the policy, run by the library with the toy source, reads probs_toy
    again = annotate(str(sample), limit=8, sources="clip,tags,toy", model=f"local-dir:{tiny_clip_dir}",
                     schema="synthetic", fusion=str(saved), use_cache=False, progress=False)
    assert again["probs_toy"][0] is not None and again["hair_color_confidence"][0] is not None


def test_sources_choose_and_order_the_run(tiny_clip_dir):
    from charattr_hf.errors import UserError
    from charattr_hf.pipeline import PipelineOptions, build_pipeline

    model = f"local-dir:{tiny_clip_dir}"
    default = build_pipeline(PipelineOptions(model=model, use_cache=False), ["image", "tags"])
    assert default.sources == ["clip", "tags"]  # the toy source is registered but not a default one
    toy = build_pipeline(PipelineOptions(model=model, sources="toy,clip", use_cache=False), ["image", "tags"])
    assert toy.sources == ["clip", "toy"]  # registry order, whatever the order asked
    assert toy.description["toy"] == "brightness, strength 1.0" and toy.cpu[1].pixels[TOY_PIXELS.column] == TOY_PIXELS
    assert toy.fingerprint() != default.fingerprint()
    strong = PipelineOptions(model=model, sources="clip,toy", use_cache=False, source_options={"toy": ToyOptions(2.0)})
    assert build_pipeline(strong, ["image"]).fingerprint() != toy.fingerprint()
    # without a tags or caption column the tags source still runs: on the prompts embedded in the images (#17)
    no_tags = build_pipeline(PipelineOptions(model=model, sources="clip,tags", use_cache=False), ["image"])
    assert no_tags.sources == ["clip", "tags"] and "_prompt" in no_tags.cpu[1].features()
    assert "_prompt" not in build_pipeline(PipelineOptions(model=model, sources="clip", use_cache=False),
                                           ["image"]).cpu[1].features()  # read only for the tags source
    with pytest.raises(UserError, match="unknown source"):
        build_pipeline(PipelineOptions(model=model, sources="clip,nope"), ["image"])
    assert list(registered_sources())[:4] == ["clip", "tagger", "tags", "blip2"]
    assert order_sources(["mine", "toy", "tags", "clip", "tagger"]) == ["clip", "tagger", "tags", "toy", "mine"]


def test_an_installed_package_registers_its_source_by_entry_point(tmp_path):
    """A package that declares ``[project.entry-points."charattr_hf.sources"]`` needs no --plugins: its source's
    options are flags of the recipe. (The installed package is a dist-info folder on PYTHONPATH, as pip writes it.)"""
    (tmp_path / "shiny_source.py").write_text(
        "from dataclasses import dataclass, field\n"
        "from charattr_hf.sources import Source, register_source\n"
        "@dataclass\nclass ShinyOptions:\n"
        "    shiny_level: int = field(default=3, metadata={'help': 'How shiny.'})\n"
        "SOURCE = Source('shiny', lambda ctx, opts: None, options=ShinyOptions, default=False)\n"
    )
    info = tmp_path / "shiny_source-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: shiny-source\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[charattr_hf.sources]\nshiny = shiny_source:SOURCE\n")
    import os

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    proc = run(RECIPE, "--help", env=env)
    assert proc.returncode == 0 and "--shiny_level" in proc.stdout and "How shiny" in proc.stdout, proc.stderr


@pytest.mark.parametrize("args, words", [
    (["--sources", "clip,nope"], ["unknown source(s) nope", "--plugins"]),
    (["--sources", "tagger"], ["--sources tagger: give --tagger"]),
    (["--sources", "tags", "--no_tags"], ["--sources tags: drop --no_tags"]),
    (["--plugins", "no_such_module_xyz"], ["--plugins no_such_module_xyz: cannot import it"]),
])
def test_sources_mistakes_are_one_line_before_any_work(args, words, tmp_path):
    from tests.test_user_errors import annotate, assert_user_error

    proc, seconds = annotate(*args, "--output_dir", str(tmp_path / "out"))
    assert_user_error(proc, seconds, *words)


def test_a_users_own_probs_column_is_fused_trained_on_and_read_by_the_policy(tmp_path):
    """A precomputed ``probs_foo`` column (no source code at all): the fusion rules, fusion training and a learned
    policy take it like any source's."""
    from charattr_hf import fusion_training as ft
    from charattr_hf.schema import load_schema
    from charattr_hf.stages.fusion import SimpleFusion
    from charattr_hf.stages.policy import PolicyFusion

    schema = load_schema("synthetic")
    data = ft.simulate_annotated(schema, 400, seed=1, sources=("clip", "foo"),
                                 profiles={**ft.DEFAULT_PROFILES, "foo": ft.DEFAULT_PROFILES["tags"]})
    config = ft.build_config(schema, data, hidden_size=16)
    assert config.sources == ["clip", "foo"]
    policy = ft.build_model(config, seed=0)
    ft.train_supervised(policy, ft.build_features(data, config), args=ft.FusionTrainingConfig(max_epochs=3, seed=0))
    policy.save_pretrained(tmp_path / "policy")

    batch = data[:32]
    conf = "hair_color_confidence"
    assert SimpleFusion(schema, ["clip", "foo"])(batch)[conf] != SimpleFusion(schema, ["clip"])(batch)[conf]
    with_foo = PolicyFusion(schema, ["clip", "foo"], str(tmp_path / "policy"))
    assert list(with_foo.sources) == ["clip", "foo"]
    assert with_foo(batch)[conf] != PolicyFusion(schema, ["clip"], str(tmp_path / "policy"))(batch)[conf]


def test_an_inputs_own_probs_column_is_fused_when_annotating(tiny_clip_dir, tmp_path):
    """An input that brings ``probs_mine`` (a classifier of the user's, run beforehand): annotation fuses it with the
    running sources; a column of the wrong shape is one clear error; ``--sources`` leaves it out."""
    import numpy as np

    from charattr_hf.api import annotate
    from charattr_hf.errors import UserError
    from charattr_hf.schema import load_schema
    from tests.test_pipeline import image_dataset

    schema = load_schema("default")
    ds = image_dataset(12)
    hair = schema["hair_color"]
    picks = [i % hair.num_labels for i in range(len(ds))]

    def row(i):  # certain of one hair colour, uniform elsewhere
        out = {a.name: (np.full(a.num_labels, 1.0 / a.num_labels) if a.name != "hair_color"
                        else np.eye(a.num_labels)[picks[i]] * 0.999 + 0.001 / a.num_labels).tolist()
               for a in schema}
        return out

    mine = ds.add_column("probs_mine", [row(i) for i in range(len(ds))])
    opts = dict(model=f"local-dir:{tiny_clip_dir}", schema="default", use_cache=False)
    out = annotate(mine, progress=False, tags=False, **opts)
    assert "probs_mine" in out.column_names and "probs_clip" in out.column_names
    assert out["hair_color"] == picks  # the random tiny CLIP is unsure; the confident column decides
    plain = annotate(ds, progress=False, tags=False, **opts)
    assert plain["hair_color"] != picks and "probs_mine" not in plain.column_names

    named = annotate(mine, progress=False, tags=False, sources="clip", **opts)
    assert "probs_mine" not in named.column_names and named["hair_color"] == plain["hair_color"]
    kept = annotate(mine, progress=False, tags=False, keep_columns=["probs_mine"], **opts)  # passed through as it is
    assert kept["hair_color"] == plain["hair_color"]
    np.testing.assert_allclose([r["hair_color"] for r in kept["probs_mine"]],
                               [r["hair_color"] for r in out["probs_mine"]], atol=1e-6)

    bad = ds.add_column("probs_bad", [{"hair_color": [0.5, 0.5]}] * len(ds))
    with pytest.raises(UserError, match="probs_bad .* does not have the shape"):
        annotate(bad, progress=False, tags=False, **opts)
