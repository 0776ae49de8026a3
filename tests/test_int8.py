"""--precision int8 on CPU: dynamic int8 quantization of the image tower, close to fp32."""

import numpy as np
import pytest
import torch

from charattr_hf.errors import UserError
from charattr_hf.sources import check_precision
from charattr_hf.sources.clip.model import ClipSpec, load_model
from charattr_hf.pipeline import PipelineOptions, build_pipeline
from charattr_hf.sources.clip.stage import ClipZeroShot

from .test_pipeline import clip_batch


def test_int8_quantizes_the_image_tower_linear_layers(tiny_clip_dir):
    spec = ClipSpec.parse(f"local-dir:{tiny_clip_dir}")
    model, _ = load_model(spec, "cpu", "int8")
    dynamic = torch.ao.nn.quantized.dynamic.Linear
    kinds = [type(m) for m in model.visual.modules()]
    assert dynamic in kinds and torch.nn.Linear not in kinds  # every plain Linear of the image tower
    assert all(not isinstance(m, dynamic) for m in model.transformer.modules())  # the text tower stays fp32
    assert not any(isinstance(m, torch.nn.MultiheadAttention) for m in model.visual.modules())  # QKV as Linear
    fp32, _ = load_model(spec, "cpu", "fp32")
    x = torch.randn(6, 3, 32, 32)
    with torch.inference_mode():
        a, b = fp32.encode_image(x, normalize=True), model.encode_image(x, normalize=True)
    assert not torch.equal(a, b)  # it is a different computation...
    assert torch.nn.functional.cosine_similarity(a, b).min() > 0.99  # ...with nearly the same result


def test_self_attention_through_linears_is_the_same_computation(tiny_clip_dir):
    import copy

    from charattr_hf.sources.clip.model import _self_attention_through_linears

    fp32, _ = load_model(ClipSpec.parse(f"local-dir:{tiny_clip_dir}"), "cpu", "fp32")
    swapped = copy.deepcopy(fp32)
    _self_attention_through_linears(swapped.visual)
    assert type(swapped.visual.transformer.resblocks[0].attn).__name__ == "LinearSelfAttention"
    x = torch.randn(4, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(swapped.encode_image(x), fp32.encode_image(x), rtol=1e-4, atol=1e-5)


def test_int8_scores_close_to_fp32(tiny_clip_dir):
    spec = ClipSpec.parse(f"local-dir:{tiny_clip_dir}")
    fp32 = ClipZeroShot("default", spec, batch_size=4, precision="fp32", embedding=True)
    int8 = ClipZeroShot("default", spec, batch_size=4, precision="int8", embedding=True)
    assert int8.cache_namespace() != fp32.cache_namespace()  # never mixed in the feature cache
    batch = clip_batch(fp32, 8)
    a, b = fp32(batch), int8(batch)
    for x, y in zip(a["probs_clip"], b["probs_clip"]):
        for attr in x:
            np.testing.assert_allclose(x[attr], y[attr], atol=0.03)
    ea, eb = np.asarray(a["embedding"], dtype=np.float32), np.asarray(b["embedding"], dtype=np.float32)
    cos = (ea * eb).sum(1) / np.linalg.norm(ea, axis=1) / np.linalg.norm(eb, axis=1)
    assert cos.min() > 0.99


@pytest.mark.parametrize("precision,device", [("int8", "cuda"), ("fp8", None), ("int4", "cpu")])
def test_unusable_precision_is_a_user_error_before_work(precision, device, tiny_clip_dir):
    with pytest.raises(UserError, match="precision"):
        check_precision(precision, device)
    with pytest.raises(UserError, match="precision"):
        build_pipeline(PipelineOptions(model=f"local-dir:{tiny_clip_dir}", precision=precision, device=device), ["image"])


def test_int8_demo_resnet_attention_pool():
    """The demo model is a ModifiedResNet: its attention pool reads its projections' weights directly, so it is
    switched to calling them as modules (same result in fp32), and they become int8."""
    import copy

    from charattr_hf.sources.clip.model import _attention_pools_through_modules

    spec = ClipSpec.parse("demo")
    fp32, _ = load_model(spec, "cpu", "fp32")
    switched = copy.deepcopy(fp32)
    _attention_pools_through_modules(switched.visual)
    assert type(switched.visual.attnpool).__name__ == "ModuleAttentionPool2d"
    x = torch.randn(5, 3, 64, 64)
    with torch.inference_mode():
        ref = fp32.encode_image(x)
        torch.testing.assert_close(switched.encode_image(x), ref, rtol=1e-4, atol=1e-5)
        int8, _ = load_model(spec, "cpu", "int8")
        assert isinstance(int8.visual.attnpool.q_proj, torch.ao.nn.quantized.dynamic.Linear)
        out = int8.encode_image(x)
    assert not torch.equal(out, ref)
    assert torch.nn.functional.cosine_similarity(out, ref).min() > 0.99
