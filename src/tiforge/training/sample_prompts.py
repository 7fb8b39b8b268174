"""kohya-ss sd-scripts' sample prompt files (`--sample_prompts`) and samplers (`--sample_sampler`).

A .txt file has one prompt a line (blank lines and lines starting with # are skipped), each with
optional settings after ` --`:

    a photo of mychar4 at the beach --n blurry, lowres --w 512 --h 768 --s 30 --l 7.5 --d 42 --ss euler_a

(--n negative prompt, --w/--h size, --s steps, --l guidance scale, --d seed, --ss sampler). A .toml file
has a `[prompt]` table of defaults and `[[prompt.subset]]` prompts; a .json file a list of prompts
(strings in the .txt syntax, or tables). Keys of the tables: prompt, negative_prompt, width, height,
sample_steps, scale, seed, sample_sampler. Settings missing everywhere take kohya's defaults.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# kohya's sampler names -> (diffusers scheduler class, extra config)
SAMPLERS: dict[str, tuple[str, dict]] = {
    "ddim": ("DDIMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpm_2": ("KDPM2DiscreteScheduler", {}),
    "dpm_2_a": ("KDPM2AncestralDiscreteScheduler", {}),
    # first-order dpmsolver cannot end on sigma zero (diffusers refuses it)
    "dpmsolver": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"}),
    "dpmsolver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "dpmsingle": ("DPMSolverSinglestepScheduler", {}),
}
SAMPLER_ALIASES = {"k_lms": "lms", "k_euler": "euler", "k_euler_a": "euler_a", "k_dpm_2": "dpm_2",
                   "k_dpm_2_a": "dpm_2_a"}
# kohya's defaults for a prompt that does not say
DEFAULT_SIZE, DEFAULT_STEPS, DEFAULT_SCALE = 512, 30, 7.5
# options kohya reads for other model families (Flux, SD3, Lumina): accepted, no effect on SD/SDXL
_OTHER_FAMILIES = {"g", "ctr", "rcfg", "fs"}
_OPTION = re.compile(r"^(ss|n|w|h|d|s|l|g|ctr|rcfg|fs|cn)(?:\s+(.*))?$", re.IGNORECASE | re.DOTALL)
_TABLE_KEYS = {"prompt", "negative_prompt", "width", "height", "sample_steps", "scale", "seed", "sample_sampler",
               "guidance_scale", "subset", "enum"}


class SamplePromptError(ValueError):
    """A prompt file tiforge cannot use; the message names the file and line (or entry) at fault."""


@dataclass(frozen=True)
class SamplePrompt:
    index: int  # its place in the file: kohya numbers the pictures by it
    prompt: str
    negative: str = ""
    width: int = DEFAULT_SIZE
    height: int = DEFAULT_SIZE
    steps: int = DEFAULT_STEPS
    scale: float = DEFAULT_SCALE
    seed: int | None = None
    sampler: str | None = None  # None: the run's sample_sampler


def sampler_name(name: str) -> str:
    """kohya's name (k_* aliases included) -> its canonical name; unknown names raise."""
    lowered = name.strip().lower()
    lowered = SAMPLER_ALIASES.get(lowered, lowered)
    if lowered not in SAMPLERS:
        raise SamplePromptError(f"unknown sampler {name!r}; use one of {', '.join([*SAMPLERS, *SAMPLER_ALIASES])}")
    return lowered


def check_sampler_available(name: str) -> None:
    """lms needs scipy, which tiforge does not otherwise need: say so before training, not at the first sample."""
    import importlib.util

    if sampler_name(name) == "lms" and importlib.util.find_spec("scipy") is None:
        raise SamplePromptError(f"sampler {name}: diffusers' LMSDiscreteScheduler needs scipy (pip install scipy); "
                                "or choose another sampler, e.g. euler or dpmsolver++")


def make_scheduler(name: str, base_config):
    """The diffusers scheduler for a kohya sampler name, on the model's own noise schedule (so that a
    v-prediction model samples as v-prediction)."""
    import diffusers

    cls_name, extra = SAMPLERS[sampler_name(name)]
    return getattr(diffusers, cls_name).from_config(base_config, **extra)


def _size(value: Any) -> int:
    # kohya rounds down to a multiple of 8, at least 64 (the VAE downsamples by 8)
    return max(64, int(value) - int(value) % 8)


def _from_table(index: int, table: dict, where: str) -> SamplePrompt:
    unknown = sorted(set(table) - _TABLE_KEYS)
    if unknown:
        raise SamplePromptError(f"{where}: unknown key(s) {', '.join(unknown)} (use {', '.join(sorted(_TABLE_KEYS))})")
    if not str(table.get("prompt", "")).strip():
        raise SamplePromptError(f"{where}: no prompt")
    try:
        prompt = SamplePrompt(
            index=index, prompt=str(table["prompt"]).strip(), negative=str(table.get("negative_prompt") or ""),
            width=_size(table.get("width", DEFAULT_SIZE)), height=_size(table.get("height", DEFAULT_SIZE)),
            steps=min(1000, int(table.get("sample_steps", DEFAULT_STEPS))),
            scale=float(table.get("scale", DEFAULT_SCALE)),
            seed=None if table.get("seed") is None else int(table["seed"]),
            sampler=sampler_name(table["sample_sampler"]) if table.get("sample_sampler") else None,
        )
    except (TypeError, ValueError) as err:
        raise SamplePromptError(f"{where}: {err}") from None
    _check_numbers(prompt, where)
    return prompt


def _check_numbers(prompt: SamplePrompt, where: str) -> None:
    """Values a picture cannot be made with (kohya would skip them or fail while training)."""
    if prompt.steps < 1:
        raise SamplePromptError(f"{where}: steps (--s / sample_steps) {prompt.steps}: expected 1 or more")
    if not math.isfinite(prompt.scale):
        raise SamplePromptError(f"{where}: scale (--l / scale) {prompt.scale}: expected a finite number")
    if prompt.seed is not None and prompt.seed < 0:
        raise SamplePromptError(f"{where}: seed (--d / seed) {prompt.seed}: expected a whole number of 0 or more")


def parse_prompt_line(line: str, index: int = 0, where: str = "line") -> SamplePrompt:
    """One line of kohya's .txt syntax: the prompt, then ` --x value` settings."""
    prompt, *options = line.strip().split(" --")
    table: dict[str, Any] = {"prompt": prompt}
    keys = {"n": "negative_prompt", "w": "width", "h": "height", "d": "seed", "s": "sample_steps", "l": "scale",
            "ss": "sample_sampler"}
    for option in options:
        match = _OPTION.match(option.strip())
        if not match:
            raise SamplePromptError(f"{where}: unknown option --{option.strip().split(' ')[0]} (kohya's are --n "
                                    "negative, --w width, --h height, --s steps, --l scale, --d seed, --ss sampler)")
        key, value = match.group(1).lower(), (match.group(2) or "").strip()
        if key in _OTHER_FAMILIES:
            continue
        if key == "cn":
            raise SamplePromptError(f"{where}: --cn (a ControlNet image) does not apply to textual inversion")
        if not value:
            raise SamplePromptError(f"{where}: --{key} needs a value")
        if key in ("w", "h", "d", "s") and not value.isdigit():
            raise SamplePromptError(f"{where}: --{key} {value}: expected a whole number of 0 or more")
        table[keys[key]] = value
    return _from_table(index, table, where)


def read_sample_prompts(path: str | Path) -> list[SamplePrompt]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise SamplePromptError(f"{path}: no such file")
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    if suffix == ".toml":
        return _from_toml(path, text)
    if suffix == ".json":
        return _from_json(path, text)
    prompts = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip() and not line.startswith("#"):
            prompts.append(parse_prompt_line(line, len(prompts), f"{path}:{number}"))
    if not prompts:
        raise SamplePromptError(f"{path}: no prompts (one a line; lines starting with # are skipped)")
    return prompts


def _from_toml(path: Path, text: str) -> list[SamplePrompt]:
    import sys

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise SamplePromptError(f"{path}: not valid TOML: {err}") from None
    section = data.get("prompt")
    if not isinstance(section, dict) or not section.get("subset"):
        raise SamplePromptError(f"{path}: expected a [prompt] table with [[prompt.subset]] entries")
    defaults = {k: v for k, v in section.items() if k != "subset"}
    return [_from_table(i, {**defaults, **sub}, f"{path}: prompt.subset[{i}]") for i, sub in enumerate(section["subset"])]


def _from_json(path: Path, text: str) -> list[SamplePrompt]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise SamplePromptError(f"{path}: not valid JSON ({err.msg}, line {err.lineno})") from None
    if not isinstance(data, list) or not data:
        raise SamplePromptError(f"{path}: expected a list of prompts")
    prompts = []
    for i, item in enumerate(data):
        where = f"{path}: [{i}]"
        if isinstance(item, str):
            prompts.append(parse_prompt_line(item, i, where))
        elif isinstance(item, dict):
            prompts.append(_from_table(i, item, where))
        else:
            raise SamplePromptError(f"{where}: expected a prompt string or a table")
    return prompts
