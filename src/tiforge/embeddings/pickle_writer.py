"""Torch pickles that AUTOMATIC1111's pickle check accepts.

A1111 verifies every .pt/.bin embedding before loading it (`modules/safe.py`): the zip may hold only
`<name>/data.pkl`, `<name>/version` and `<name>/data/<n>` (newer versions also allow `byteorder` and
`.data/serialization_id`), and the pickle only a short list of globals. Recent torch.save also writes
`.format_version` and `.storage_alignment`, which A1111 refuses as "bad file inside". So the archive is
written by torch and then copied with only the entries every version of that check allows; torch,
diffusers, kohya, ComfyUI and InvokeAI read the result as before (torch takes the missing records'
defaults: little-endian, no alignment).
"""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import numpy as np

from tiforge.embeddings.arrays import to_torch

# The entries the oldest A1111 check allows; a subset of what the newest allows.
PLAIN_ENTRY = re.compile(r"^[^/]+/(data\.pkl|version|data/\d+)$")


def _as_plain_tensors(value):
    """numpy arrays as tensors that pickle with only `_rebuild_tensor_v2` and a storage class: no
    Parameter, no subclass, no hooks, storage exactly the tensor's (a view would save its whole base)."""
    if isinstance(value, np.ndarray):
        return to_torch(value)  # a fresh, plain tensor over its own copy of the array
    if isinstance(value, dict):
        return {k: _as_plain_tensors(v) for k, v in value.items()}
    return value


def save_plain_torch_zip(obj, path: str | Path) -> None:
    """`obj`: a layout dict whose numpy arrays are written as plain torch tensors. Imports torch:
    the pickled containers are the one kind of file that needs it."""
    import torch

    raw = io.BytesIO()
    torch.save(_as_plain_tensors(obj), raw)
    with zipfile.ZipFile(io.BytesIO(raw.getvalue())) as src, \
            zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            if PLAIN_ENTRY.match(info.filename):
                # a fixed date keeps the file's bytes the same for the same vectors
                entry = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
                dst.writestr(entry, src.read(info.filename))
