"""Contracts with the tools that read our files: every layout x container x precision x family that
tiforge writes passes each reading tool's acceptance rules (src/tiforge/embedding_compat.py, one rule
per tool, learned from their loader code), and the rules themselves refuse what those tools refuse.

EXPECTED is the table README's "which tool loads what" is copied from.
"""

from __future__ import annotations

import itertools
import pickle
import zipfile

import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from safetensors.torch import load_file

from tiforge.embeddings.compatibility import A1111_ZIP_ENTRY, TOOLS, a1111_pickle_problem, verdicts
from tiforge.embeddings.files import load_embedding, save_embedding

FAMILIES = {"sd1": 768, "sd2": 1024, "sdxl": (768, 1280)}
TARGETS = [  # (layout, container) tiforge writes
    ("diffusers", ".safetensors"), ("diffusers", ".bin"), ("diffusers", ".pt"),
    ("a1111", ".pt"), ("a1111", ".bin"), ("a1111", ".png"),
    ("kohya", ".safetensors"), ("kohya", ".pt"), ("kohya", ".bin"), ("kohya", ".ckpt"),
]
PRECISIONS = ["float32", "float16", "bfloat16"]
ALL = {"diffusers", "A1111", "ComfyUI", "kohya", "InvokeAI"}
NO_INVOKEAI_IF_SEVERAL = ALL - {"InvokeAI"}
EXPECTED = {  # (layout, container) -> tools that load it; None: InvokeAI only with one vector
    ("diffusers", ".safetensors"): None, ("diffusers", ".bin"): None, ("diffusers", ".pt"): None,
    ("a1111", ".pt"): ALL, ("a1111", ".bin"): ALL, ("a1111", ".png"): {"A1111"},
    ("kohya", ".safetensors"): ALL, ("kohya", ".pt"): ALL, ("kohya", ".bin"): ALL,
    ("kohya", ".ckpt"): {"diffusers", "kohya", "InvokeAI"},
}


def _cases():
    for family, (layout, ext), precision, n in itertools.product(FAMILIES, TARGETS, PRECISIONS, (1, 3)):
        if family == "sdxl" and layout != "kohya":
            continue  # refused with a message (test_sdxl); SDXL is written in the kohya layout only
        yield family, layout, ext, precision, n


CASES = list(_cases())


def _write(tmp_path, family, layout, ext, precision, n, widths=None):
    widths = widths or FAMILIES[family]
    torch.manual_seed(0)
    if family == "sdxl":
        vectors = {"clip_l": torch.randn(n, widths[0]), "clip_g": torch.randn(n, widths[1])}
    else:
        vectors = torch.randn(n, widths)
    return save_embedding(tmp_path / f"mything{ext}", "mything", vectors, format=layout, precision=precision), vectors


def _expected(layout, ext, n):
    tools = EXPECTED[(layout, ext)]
    return (ALL if n == 1 else NO_INVOKEAI_IF_SEVERAL) if tools is None else tools


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """Every case written once; each tool's test reads the same files."""
    out = {}
    for case in CASES:
        folder = tmp_path_factory.mktemp("_".join(map(str, case)).replace(".", ""))
        out[case] = _write(folder, *case)[0]
    return out


def _verdict(path, tool):
    return next(v for v in verdicts(path) if v.tool == tool)


@pytest.mark.parametrize("tool", TOOLS)
def test_each_tool_loads_what_the_table_says(tool, written):
    wrong = []
    for (family, layout, ext, precision, n), path in written.items():
        v = _verdict(path, tool)
        if v.loads != (tool in _expected(layout, ext, n)):
            wrong.append(f"{family} {layout}{ext} {precision} n={n}: {v}")
    assert not wrong, "\n".join(wrong[:10])


def test_a1111_pickle_check_zip_entries_and_globals(written):
    """safe.py: the oldest entry list (data.pkl, version, data/N) - a subset of today's - and only its globals."""
    for case, path in written.items():
        if path.suffix in (".pt", ".bin", ".ckpt"):
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
            assert all(A1111_ZIP_ENTRY.match(n) for n in names), (case, names)
            assert not [n for n in names if n.rsplit("/", 1)[-1] in ("byteorder", ".format_version",
                                                                     ".storage_alignment", "serialization_id")]
            assert a1111_pickle_problem(path) is None, case


def test_a1111_pickle_check_refuses_what_a1111_refuses(tmp_path):
    plain = tmp_path / "plain.pt"
    torch.save({"emb_params": torch.zeros(1, 768)}, plain)  # torch 2.13 adds .format_version
    assert ".format_version" in a1111_pickle_problem(plain)
    sneaky = tmp_path / "sneaky.pt"
    torch.save({"emb_params": torch.zeros(1, 768), "x": pickle.PickleBuffer}, sneaky)
    problem = a1111_pickle_problem(sneaky)
    assert problem and ("forbidden" in problem or "refuses" in problem)


def test_pickles_stay_readable_by_torch_weights_only(written):
    for case, path in written.items():
        if path.suffix in (".pt", ".bin", ".ckpt"):
            data = torch.load(path, map_location="cpu", weights_only=True)
            assert isinstance(data, dict), case


@pytest.mark.parametrize("case", CASES[::7], ids=str)
def test_vectors_and_precision_survive_every_reader_path(case, tmp_path):
    family, layout, ext, precision, n = case
    path, vectors = _write(tmp_path, *case)
    emb = load_embedding(path)  # also kohya --weights / initial_embedding_file
    expected = vectors if isinstance(vectors, dict) else {"v": vectors}
    got = emb.vectors if family == "sdxl" else {"v": emb.single}
    for key, t in expected.items():
        want = t.to(getattr(torch, precision)).float()
        assert got[key].shape == (n, t.shape[1])
        if ext != ".png":  # pictures hold float32 JSON of the same numbers
            assert got[key].dtype == getattr(torch, precision)
        assert torch.equal(got[key].float(), want)


def test_invokeai_probe_widths(tmp_path):
    """One vector in the diffusers layout is written 1-D ([W]); its probe reads shape[0] of {token: tensor}."""
    path, _ = _write(tmp_path, "sd1", "diffusers", ".safetensors", "float32", 1)
    assert load_file(str(path))["mything"].shape == (768,)
    bad = tmp_path / "learned_embeds.bin"
    torch.save({"<x>": torch.zeros(1, 768)}, bad)  # what diffusers' own example writes for one vector
    v = _verdict(bad, "InvokeAI")
    assert not v.loads and "unrecognized token dimension 1" in v.reason and "--to kohya" in v.reason


def test_several_vectors_in_the_diffusers_layout_warn_and_name_the_layout_that_works(tmp_path, caplog):
    _write(tmp_path, "sd1", "diffusers", ".safetensors", "float32", 3)
    assert "not in InvokeAI" in caplog.text and "kohya" in caplog.text


def test_the_rules_refuse_what_the_tools_refuse(tmp_path):
    two = tmp_path / "two.pt"
    torch.save({"string_to_param": {"*": torch.zeros(1, 768), "x": torch.zeros(1, 768)}, "string_to_token": {}}, two)
    assert not _verdict(two, "A1111").loads  # "embedding file has multiple terms in it"
    half = tmp_path / "half.safetensors"
    from safetensors.torch import save_file
    save_file({"clip_g": torch.zeros(1, 1280)}, str(half))
    assert not _verdict(half, "InvokeAI").loads  # its loader needs clip_l and clip_g together


@pytest.fixture(scope="module")
def tiny_pipes(tiny_sd1, tiny_sdxl):
    return {
        "sd1": StableDiffusionPipeline.from_pretrained(tiny_sd1, safety_checker=None, local_files_only=True),
        "sdxl": StableDiffusionXLPipeline.from_pretrained(tiny_sdxl, local_files_only=True),
    }


# Each real load costs seconds (the tokenizer grows and shrinks), so precisions and vector counts
# rotate over the containers instead of multiplying them.
REAL_LOADS = [(layout, ext, PRECISIONS[i % 3], 1 + 2 * (i % 2))
              for i, (layout, ext) in enumerate(t for t in TARGETS if t[1] != ".png")]


@pytest.mark.parametrize("layout, ext, precision, n", REAL_LOADS)
def test_diffusers_load_textual_inversion_really_loads(layout, ext, precision, n, tiny_pipes, tmp_path):
    """The real call, on a tiny pipeline: the path itself for SD, one call per encoder for SDXL."""
    for family in ("sd1", "sdxl"):
        if family == "sdxl" and layout != "kohya":
            continue
        pipe = tiny_pipes[family]
        encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if family == "sdxl" else [])
        widths = tuple(e.get_input_embeddings().weight.shape[1] for e in encoders)
        path, vectors = _write(tmp_path / f"{family}{n}", family, layout, ext, precision, n,
                               widths if family == "sdxl" else widths[0])
        token = "mything"
        try:
            if family == "sdxl":
                state = load_file(str(path)) if ext == ".safetensors" else torch.load(path, weights_only=True)
                pipe.load_textual_inversion(state["clip_l"], token=token, text_encoder=pipe.text_encoder,
                                            tokenizer=pipe.tokenizer)
                pipe.load_textual_inversion(state["clip_g"], token=token, text_encoder=pipe.text_encoder_2,
                                            tokenizer=pipe.tokenizer_2)
            else:
                pipe.load_textual_inversion(str(path), token=token if layout == "kohya" else None)
            want = vectors if isinstance(vectors, dict) else {"one": vectors}
            for encoder, tokenizer, t in zip(encoders, [pipe.tokenizer, getattr(pipe, "tokenizer_2", None)],
                                             want.values()):
                ids = tokenizer.convert_tokens_to_ids([token] + [f"{token}_{i}" for i in range(1, n)])
                got = encoder.get_input_embeddings().weight[ids].detach()
                assert torch.equal(got, t.to(getattr(torch, precision)).float()), (family, n)
        finally:
            pipe.unload_textual_inversion()
            if family == "sdxl":
                pipe.unload_textual_inversion(tokenizer=pipe.tokenizer_2, text_encoder=pipe.text_encoder_2)


def test_inspect_says_which_tools_load_the_file(tmp_path, capsys):
    from tiforge.frontends.cli import main

    path, _ = _write(tmp_path, "sd2", "diffusers", ".safetensors", "float16", 3)
    assert main(["inspect", str(path)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("tools:"))
    assert "loads in: diffusers, A1111, ComfyUI, kohya; not InvokeAI:" in line and "use --to kohya" in line


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_get_the_permissions_the_umask_gives(umask, mode, tmp_path):
    import os

    old = os.umask(umask)
    try:
        for layout, ext in (("kohya", ".safetensors"), ("a1111", ".pt"), ("a1111", ".png")):
            path, _ = _write(tmp_path / ext[1:], "sd1", layout, ext, "float32", 2)
            assert path.stat().st_mode & 0o777 == mode, (ext, oct(path.stat().st_mode))
    finally:
        os.umask(old)
