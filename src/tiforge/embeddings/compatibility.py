"""Which tools load an embedding file: each tool's acceptance rules, read from its own loader code.

One rule per tool, applied to the file as the tool would see it (its extension, its zip entries, the
raw dict it unpickles), never to tiforge's own reading of it. `tiforge inspect` prints the verdicts and
the contract tests (tests/test_tool_contracts.py) check every file tiforge writes against them.

- diffusers `load_textual_inversion(path)`: a single-key `{token: tensor}` dict (the key becomes the
  token) or A1111's `string_to_param["*"]` with `name`; SDXL files are loaded once per text encoder from
  their `clip_l` / `clip_g` tensors. Pictures are not read.
- AUTOMATIC1111 (`modules/textual_inversion`, `modules/safe.py`): .pt/.bin/.safetensors and
  .png/.webp pictures (not .ckpt); pickles pass the zip-entry and restricted-unpickler check first;
  `string_to_param` with exactly one entry, or SDXL `clip_g` + `clip_l`, or one key holding a tensor.
- ComfyUI (`comfy/sd1_clip.py` load_embed): finds `<name>.safetensors/.pt/.bin`, reads pickles with
  weights_only; takes `string_to_param`'s first value, else the text encoder's own key (`clip_l`,
  `clip_g`), else the first value.
- kohya-ss sd-scripts (`load_weights`, also `--weights`): SD takes `string_to_param`'s or the dict's
  first tensor; SDXL needs `clip_l` / `clip_g`. Pictures are not read.
- InvokeAI (`model_manager/configs/textual_inversion.py` probe): .safetensors/.pt/.pth/.ckpt/.bin; the
  width is `string_to_param`'s, `emb_params`' or `clip_g`'s last axis, else the first value's FIRST
  axis, and must be 768, 1024 or 1280: a `{token: [n, W]}` file reads as width n and is refused.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tiforge.embeddings.files import PICTURE_SUFFIXES, _read_picture, _read_pickle, _read_safetensors

TOOLS = ("diffusers", "A1111", "ComfyUI", "kohya", "InvokeAI")
WIDTHS = {768: "SD 1.x / SDXL clip_l", 1024: "SD 2.x", 1280: "SDXL clip_g"}

# modules/safe.py, newest version: the zip entries and globals its check lets through
A1111_ZIP_ENTRY = re.compile(r"^([^/]+)/((data/\d+)|version|byteorder|.data/serialization_id|(data\.pkl))$")
A1111_GLOBALS = {
    ("collections", "OrderedDict"),
    *(("torch._utils", n) for n in ("_rebuild_tensor_v2", "_rebuild_parameter", "_rebuild_device_tensor_from_numpy")),
    *(("torch", n) for n in ("FloatStorage", "HalfStorage", "IntStorage", "LongStorage", "DoubleStorage",
                             "ByteStorage", "float32", "BFloat16Storage")),
    ("torch.nn.modules.container", "ParameterDict"),
    ("numpy.core.multiarray", "scalar"), ("numpy.core.multiarray", "_reconstruct"),
    ("numpy", "dtype"), ("numpy", "ndarray"), ("_codecs", "encode"), ("__builtin__", "set"),
}


@dataclass(frozen=True)
class Verdict:
    tool: str
    loads: bool
    reason: str = ""  # why not, or how (e.g. "with token=...")


def _raw(path: Path) -> dict:
    """The dict a tool gets from the file (pictures: A1111's decoded chunk), tensors as numpy arrays."""
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return _read_safetensors(path)[0]
    if suffix in PICTURE_SUFFIXES:
        return _read_picture(path)
    return _read_pickle(path)


def _is_sdxl(raw: dict) -> bool:
    return "clip_l" in raw and "clip_g" in raw


def _first_tensor(raw: dict):
    value = next(iter(raw.values()), None)
    return value if isinstance(value, np.ndarray) else None


class _A1111Unpickler(pickle.Unpickler):
    def persistent_load(self, saved_id):
        return None

    def find_class(self, module, name):
        if (module, name) not in A1111_GLOBALS:
            raise pickle.UnpicklingError(f"global '{module}/{name}' is forbidden")
        if (module, name) == ("collections", "OrderedDict"):
            return dict
        return lambda *args, **kwargs: None  # allowed; only the check matters here, nothing is rebuilt


def a1111_pickle_problem(path: Path) -> str | None:
    """What A1111's safe.py check refuses in a pickled file, or None."""
    try:
        with zipfile.ZipFile(path) as z:
            bad = [n for n in z.namelist() if not A1111_ZIP_ENTRY.match(n)]
            if bad:
                return f"its pickle check refuses the zip entry {bad[0]!r}"
            pkl = [n for n in z.namelist() if n.endswith("/data.pkl")]
            if len(pkl) != 1:
                return "its pickle check needs exactly one data.pkl"
            with z.open(pkl[0]) as f:
                _A1111Unpickler(f).load()
    except zipfile.BadZipFile:
        return "not a zip-format torch file"
    except pickle.UnpicklingError as err:
        return f"its pickle check refuses it: {err}"
    return None


def _diffusers(path: Path, raw: dict) -> Verdict:
    if path.suffix.lower() in PICTURE_SUFFIXES:
        return Verdict("diffusers", False, "load_textual_inversion does not read pictures; use --to kohya")
    if _is_sdxl(raw) and len(raw) == 2:
        return Verdict("diffusers", True, "one load_textual_inversion call per text encoder, with clip_l and clip_g")
    if len(raw) == 1 and _first_tensor(raw) is not None:
        key = next(iter(raw))
        return Verdict("diffusers", True, f"pass token=... (the file's key is {key!r})" if key == "emb_params" else "")
    if isinstance(raw.get("string_to_param"), dict) and "*" in raw["string_to_param"] and "name" in raw:
        return Verdict("diffusers", True)
    return Verdict("diffusers", False, "load_textual_inversion needs one {token: tensor} or string_to_param['*']")


def _a1111(path: Path, raw: dict) -> Verdict:
    suffix = path.suffix.lower()
    if suffix not in (".pt", ".bin", ".safetensors", *PICTURE_SUFFIXES):
        return Verdict("A1111", False, f"its embeddings folder skips {suffix} files; name it .pt or use .safetensors")
    if suffix in (".pt", ".bin"):
        problem = a1111_pickle_problem(path)
        if problem:
            return Verdict("A1111", False, problem)
    if "string_to_param" in raw:
        ok = isinstance(raw["string_to_param"], dict) and len(raw["string_to_param"]) == 1
        return Verdict("A1111", ok, "" if ok else "string_to_param must hold exactly one entry")
    if _is_sdxl(raw):
        ok = all(isinstance(v, np.ndarray) for v in raw.values())
        return Verdict("A1111", ok, "" if ok else "an SDXL file may hold only tensors")
    if len(raw) == 1 and _first_tensor(raw) is not None:
        return Verdict("A1111", True)
    return Verdict("A1111", False, "not string_to_param, clip_g + clip_l, nor a single tensor")


def _comfyui(path: Path, raw: dict) -> Verdict:
    if path.suffix.lower() not in (".safetensors", ".pt", ".bin"):
        return Verdict("ComfyUI", False, f"embedding:<name> only finds .safetensors, .pt and .bin files, not {path.suffix}")
    if _is_sdxl(raw):
        ok = raw["clip_l"].shape[-1] == 768 and raw["clip_g"].shape[-1] == 1280
        return Verdict("ComfyUI", ok, "" if ok else "clip_l must be 768 and clip_g 1280 wide")
    values = raw["string_to_param"] if isinstance(raw.get("string_to_param"), dict) else raw
    first = _first_tensor(values)
    ok = first is not None and first.shape[-1] in WIDTHS
    return Verdict("ComfyUI", ok, "" if ok else "its first value is not a tensor of a known width")


def _kohya(path: Path, raw: dict) -> Verdict:
    if path.suffix.lower() in PICTURE_SUFFIXES:
        return Verdict("kohya", False, "--weights does not read pictures")
    if _is_sdxl(raw):
        return Verdict("kohya", True)
    values = raw["string_to_param"] if isinstance(raw.get("string_to_param"), dict) else raw
    ok = _first_tensor(values) is not None
    return Verdict("kohya", ok, "" if ok else "its first value is not a tensor")


def invokeai_token_width(path: str | Path) -> int:
    """The token width InvokeAI's probe reads from the file (768 SD1, 1024 SD2, 1280 SDXL)."""
    return int(_invokeai_width(_raw(Path(path))))


def _invokeai_width(raw: dict):
    if "string_to_token" in raw:
        return next(iter(raw["string_to_param"].values())).shape[-1]
    if "emb_params" in raw:
        return raw["emb_params"].shape[-1]
    if "clip_g" in raw:
        return raw["clip_g"].shape[-1]
    return next(iter(raw.values())).shape[0]


def _invokeai(path: Path, raw: dict) -> Verdict:
    if path.suffix.lower() not in (".safetensors", ".pt", ".pth", ".ckpt", ".bin"):
        return Verdict("InvokeAI", False, f"it does not install {path.suffix} files; use --to kohya")
    looks = (path.stem == "learned_embeds" or any(k in raw for k in ("string_to_param", "emb_params", "clip_g"))
             or (len(raw) < 10 and all(isinstance(v, np.ndarray) for v in raw.values())))
    if not looks:
        return Verdict("InvokeAI", False, "its probe does not recognise the layout; use --to kohya")
    if "clip_g" in raw and "clip_l" not in raw:
        return Verdict("InvokeAI", False, "an SDXL file needs clip_l too")
    try:
        width = int(_invokeai_width(raw))
    except Exception:  # the probe fails the same way on a layout it cannot measure
        return Verdict("InvokeAI", False, "its probe cannot find the token width; use --to kohya")
    if width not in WIDTHS:
        flat = not any(k in raw for k in ("string_to_token", "emb_params", "clip_g"))
        why = "its probe reads the token width from the first axis of a {token: [n, W]} file: " if flat else ""
        return Verdict("InvokeAI", False, f"{why}'unrecognized token dimension {width}'" + ("; use --to kohya" if flat else ""))
    return Verdict("InvokeAI", True)


RULES = {"diffusers": _diffusers, "A1111": _a1111, "ComfyUI": _comfyui, "kohya": _kohya, "InvokeAI": _invokeai}


def verdicts(path: str | Path) -> list[Verdict]:
    path = Path(path)
    try:
        raw = _raw(path)
    except Exception as err:
        return [Verdict(tool, False, f"unreadable: {err}") for tool in TOOLS]
    return [RULES[tool](path, raw) for tool in TOOLS]


def loads_in_line(path: str | Path) -> str:
    """`loads in: diffusers, A1111, ComfyUI, kohya; not InvokeAI: <reason>`"""
    found = verdicts(path)
    ok = [v.tool + (f" ({v.reason})" if v.reason else "") for v in found if v.loads]
    not_ok = [f"not {v.tool}: {v.reason}" for v in found if not v.loads]
    return "; ".join([f"loads in: {', '.join(ok) if ok else 'none of the tools checked'}", *not_ok])
