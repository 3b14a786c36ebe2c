"""The ``--dtype`` modes of the benchmarks, one table for both frameworks.

``float32`` is IEEE float32 matmuls in both (left alone on a GPU, JAX would use TF32
and PyTorch would not); ``tf32`` lets both use TF32 tensor cores (GPU only);
``bfloat16`` computes in bf16 (our ``DynaBertModel(dtype=bfloat16)``, PyTorch
``autocast``), with float32 weights in both.
"""

#: --dtype -> (our compute dtype, JAX default matmul precision, PyTorch allow_tf32,
#: PyTorch autocast dtype or None)
PRECISIONS = {"float32": ("float32", "highest", False, None),
              "tf32": ("float32", "tensorfloat32", True, None),
              "bfloat16": ("bfloat16", None, False, "bfloat16")}


def set_torch_precision(torch, dtype: str):
    """Apply ``dtype``'s TF32 setting to PyTorch; returns its autocast dtype (or None)."""
    _, _, allow_tf32, autocast = PRECISIONS[dtype]
    torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    torch.backends.cudnn.allow_tf32 = allow_tf32
    return getattr(torch, autocast) if autocast else None
