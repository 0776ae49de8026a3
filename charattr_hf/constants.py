"""Names shared by the options (parsed before anything heavy is imported) and the code that acts on them, written
once. Imports nothing."""

__all__ = ["PRECISIONS", "FUSION_METHODS", "IMAGE_SUFFIXES"]

#: ``--precision``: auto (fp16 on CUDA, fp32 on CPU), fp32, fp16, bf16, and int8 (CPU only: dynamic int8
#: quantization of the CLIP image tower's Linear layers).
PRECISIONS = ("auto", "fp32", "fp16", "bf16", "int8")

#: ``--fusion_method``: the fixed fusion rules (:class:`~charattr_hf.stages.fusion.SimpleFusion`).
FUSION_METHODS = ("confidence", "mean", "vote")

#: File name suffixes read as images in an image folder.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
