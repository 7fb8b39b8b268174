"""The real CLIP tokenizer, built offline from the BPE file that open_clip_torch ships.

Model hubs are unreachable on many machines tiforge runs on (CI, air-gapped boxes), yet tests and the
demo need the exact vocabulary real SD models use, so that token ids (49406 start, 49407 end, 49408
for the first added token) match what users see with real checkpoints.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
from pathlib import Path

# CLIP's BPE file holds more merges than the model uses: 49152 - 256 byte symbols - 2 specials.
_NUM_MERGES = 49152 - 256 - 2
_BPE_NAME = "bpe_simple_vocab_16e6.txt.gz"


def _bytes_to_unicode() -> dict[int, str]:
    # The byte-level alphabet of GPT-2/CLIP BPE: printable bytes map to themselves, the rest to
    # code points above 255 so every byte has a visible, whitespace-free symbol.
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes)))


def find_bpe_file() -> Path:
    for module in ("open_clip", "clip"):
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            continue
        for location in spec.submodule_search_locations:
            candidate = Path(location) / _BPE_NAME
            if candidate.is_file():
                return candidate
    raise FileNotFoundError(
        f"The CLIP vocabulary file {_BPE_NAME} was not found. It ships inside the open_clip_torch package: "
        "install it with `pip install --no-deps open_clip_torch` (scripts/setup.sh does this)."
    )


def write_vocab_and_merges(out_dir: Path) -> None:
    lines = gzip.open(find_bpe_file()).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : _NUM_MERGES + 1]]
    symbols = list(_bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}), encoding="utf-8")
    (out_dir / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8"
    )
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "do_lower_case": True,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")


def cache_dir() -> Path:
    root = os.environ.get("TIFORGE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "tiforge")
    return Path(root)


def load_clip_tokenizer(pad_token: str = "<|endoftext|>"):
    """A fresh CLIP tokenizer as SD uses it; SD 2.x and SDXL's second tokenizer pad with "!" instead.

    Fresh on every call: training adds placeholder tokens to it, which must not leak into other users.
    """
    from transformers import CLIPTokenizer

    files = cache_dir() / "clip-bpe"
    if not (files / "vocab.json").is_file() or not (files / "merges.txt").is_file():
        tmp = files.with_name(files.name + f".tmp{os.getpid()}")
        write_vocab_and_merges(tmp)
        tmp.mkdir(parents=True, exist_ok=True)
        try:
            tmp.rename(files)
        except OSError:  # another process won the race; its files are identical
            pass
    # from_pretrained on a folder works the same on transformers 4 and 5, whose constructors differ.
    return CLIPTokenizer.from_pretrained(str(files), pad_token=pad_token, local_files_only=True)
