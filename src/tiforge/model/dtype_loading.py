"""Loading one part of a local diffusers folder straight into the dtype training uses, a tensor at a time.

diffusers' and transformers' `from_pretrained` read a part's whole state dict before converting it:
safetensors maps the file into memory and every page read counts in the process's resident memory, so
a bf16 load of SD 1.5 peaks at its fp32 files plus their bf16 copies (~5.5 GiB for ~2 GiB of weights).
Here the model is built without weights (meta device), each tensor is read with pread(2) (no mapping),
cast and kept, so the peak is the converted model plus one tensor as stored. Anything this loader does
not know for certain (sharded or pickled weights, unknown keys, modules the library keeps in fp32)
is left to `from_pretrained(torch_dtype=...)`, which gives the same values with a higher peak.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)

# The weights file of each library's single-file save (diffusers / transformers).
_WEIGHTS_NAMES = ("diffusion_pytorch_model.safetensors", "model.safetensors")
# Stored by older transformers versions; today a buffer the model computes itself.
_IGNORED_FILE_KEYS = ("position_ids",)


def read_tensors_in_dtype(path: Path, dtype: torch.dtype, keys=None):
    """(name, tensor) for each tensor of a .safetensors file, floating-point ones cast to `dtype`, read
    one by one with pread so that neither the whole file nor its mapping is ever resident."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", backend="pread") as f:
        for key in keys if keys is not None else f.keys():
            tensor = f.get_tensor(key)
            if tensor.is_floating_point() and tensor.dtype != dtype:
                tensor = tensor.to(dtype)
            yield key, tensor


def _weights_file(folder: Path) -> Path | None:
    found = [folder / name for name in _WEIGHTS_NAMES if (folder / name).is_file()]
    return found[0] if len(found) == 1 else None


def _empty_model(cls, folder: Path):
    """The part's architecture from its config, its parameters on the meta device (no memory)."""
    from accelerate import init_empty_weights

    if hasattr(cls, "load_config"):  # diffusers
        config = cls.load_config(str(folder))
        with init_empty_weights():
            return cls.from_config(config)
    config = cls.config_class.from_pretrained(str(folder))  # transformers
    with init_empty_weights():
        return cls(config)


def load_part_in_dtype(cls, folder: Path, dtype: torch.dtype):
    """The part in `folder` (a diffusers folder's text_encoder/, vae/, unet/) with its weights in `dtype`,
    equal to `cls.from_pretrained(folder).to(dtype)`; None where this loader cannot vouch for that."""
    weights = _weights_file(folder)
    if weights is None or getattr(cls, "_keep_in_fp32_modules", None):
        return None
    from safetensors import safe_open

    model = _empty_model(cls, folder)
    wanted = set(model.state_dict())
    with safe_open(str(weights), framework="pt") as f:  # the header alone
        stored = [k for k in f.keys() if not k.endswith(_IGNORED_FILE_KEYS)]
    if set(stored) != wanted:
        log.debug("%s: keys differ from %s's; loading it with from_pretrained", weights, cls.__name__)
        return None
    state = dict(read_tensors_in_dtype(weights, dtype, stored))
    model.load_state_dict(state, strict=True, assign=True)
    _cast_own_buffers(model, dtype)
    if hasattr(model, "register_to_config"):  # where from_pretrained says the part came from
        model.register_to_config(_name_or_path=str(folder.parent))
    else:
        model.config._name_or_path = str(folder.parent)
    return model.eval()


def _cast_own_buffers(model, dtype: torch.dtype) -> None:
    """Floating-point buffers the model computes itself (not in the file) in `dtype`, as a load-then-cast
    would leave them; module by module, since diffusers' `.to(dtype)` warns about fp32 modules it has none of."""
    for module in model.modules():
        for name, buffer in module.named_buffers(recurse=False):
            if buffer is not None and buffer.is_floating_point() and buffer.dtype != dtype:
                module._buffers[name] = buffer.to(dtype)
