"""Vectors as numpy arrays: what the embedding-file layer holds, so that `tiforge inspect` and
`tiforge convert` on safetensors files and pictures never import torch (3-4 s here, against 0.3 s
for numpy, safetensors and PIL). Torch tensors come in from training and go out to it and to the
pickle writer through `from_torch` / `to_torch`, which import nothing themselves.

numpy has no bfloat16 (nor float8). ml_dtypes adds them as real numpy dtypes, so one code path holds
every precision, rather than importing torch for a bf16 file (3-4 s) and keeping tensors beside
arrays. It is imported only when a file or a `--precision` needs one of those dtypes. Measured here:
numpy 0.25 s; ml_dtypes 0.5/0.6 about +0.05 s; 0.7.0 about +1.2 s (its extension's start-up),
hence the `<0.7` in pyproject.toml.
"""

from __future__ import annotations

import sys

import numpy as np

# dtypes numpy lacks, by the name torch, ml_dtypes and safetensors' writer share
ML_DTYPES = ("bfloat16", "float8_e4m3fn", "float8_e5m2")
# safetensors' dtype codes that torch read before (the rest, e.g. 4-bit floats, were never vectors)
SAFETENSORS_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
    "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8", "BOOL": "bool",
}


def numpy_dtype(name: str) -> np.dtype:
    """'float32', 'bfloat16', ...: a numpy dtype, ml_dtypes' for those numpy lacks."""
    if name in ML_DTYPES:
        import ml_dtypes

        return np.dtype(getattr(ml_dtypes, name))
    return np.dtype(name)


def _same_width_int(dtype: np.dtype) -> np.dtype:
    return np.dtype(f"int{dtype.itemsize * 8}")


def is_tensor(value) -> bool:
    """A torch tensor (Parameter included), checked without importing torch: a program that made
    one has imported it already."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def from_torch(t) -> np.ndarray:
    """A CPU copy of a torch tensor; bfloat16 and float8 travel as raw bits of the same width."""
    t = t.detach().cpu()
    name = str(t.dtype).removeprefix("torch.")
    if name in ML_DTYPES:
        bits = _same_width_int(numpy_dtype(name))
        return t.view(getattr(sys.modules["torch"], str(bits))).numpy().view(numpy_dtype(name))
    try:
        return t.numpy().copy()
    except TypeError:  # complex32, quantized, ...: nothing an embedding is stored in
        raise ValueError(f"holds {name} values, which tiforge does not read") from None


def to_torch(a: np.ndarray):
    """A torch tensor with its own memory and the array's dtype (for training and torch.save)."""
    import torch

    if a.dtype.name in ML_DTYPES:
        return torch.from_numpy(np.ascontiguousarray(a).view(_same_width_int(a.dtype)).copy()).view(
            getattr(torch, a.dtype.name))
    return torch.from_numpy(np.array(a, copy=True))


def as_array(value):
    """numpy arrays as they are, torch tensors copied to numpy, anything else unchanged."""
    return from_torch(value) if is_tensor(value) else value


def tensors_to_arrays(value):
    """A file's unpickled dict with every tensor, at any dict depth, as a numpy array."""
    if isinstance(value, dict):
        return {k: tensors_to_arrays(v) for k, v in value.items()}
    return as_array(value)


def finite(a: np.ndarray) -> bool:
    with np.errstate(over="ignore", invalid="ignore"):  # float64 beyond float32's range counts as infinite
        return bool(np.isfinite(a.astype(np.float32)).all())
