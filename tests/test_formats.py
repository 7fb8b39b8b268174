"""Embedding files across the tools' layouts: round trips, readers of the other tools, the CLI."""

import itertools
import json

import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file, save_file

from tiforge.frontends.cli import main
from tiforge.embeddings.convert import convert, install_for_invokeai
from tiforge.embeddings.files import EmbeddingFileError, load_embedding, save_embedding
from tiforge.embeddings.generate import load_embeddings_into

TARGETS = [  # (format, extension)
    ("diffusers", ".safetensors"), ("diffusers", ".bin"), ("diffusers", ".pt"),
    ("a1111", ".pt"), ("a1111", ".bin"), ("a1111", ".png"),
    ("kohya", ".safetensors"), ("kohya", ".pt"), ("kohya", ".ckpt"),
]


@pytest.fixture
def vectors():
    torch.manual_seed(0)
    return torch.randn(3, 32)


@pytest.mark.parametrize("a, b", list(itertools.permutations(TARGETS, 2)))
def test_round_trip_every_pair_is_bit_exact(a, b, vectors, tmp_path):
    start = save_embedding(tmp_path / f"start{a[1]}", "<t>", vectors, format=a[0])
    middle = convert(start, tmp_path / f"middle{b[1]}", b[0], token="<t>")
    back = convert(middle, tmp_path / f"back{a[1]}", a[0], token="<t>")
    for path in (start, middle, back):
        emb = load_embedding(path)
        assert torch.equal(emb.single, vectors), path
    assert load_embedding(middle).format == b[0]


def test_layouts_are_what_the_other_tools_write(vectors, tmp_path):
    d = torch.load(save_embedding(tmp_path / "a.pt", "mystyle", vectors, format="a1111", step=500), weights_only=True)
    assert set(d) == {"string_to_token", "string_to_param", "name", "step", "sd_checkpoint", "sd_checkpoint_name"}
    assert d["name"] == "mystyle" and d["step"] == 500 and torch.equal(d["string_to_param"]["*"], vectors)
    k = load_file(save_embedding(tmp_path / "k.safetensors", "<t>", vectors, format="kohya", precision="float16"))
    assert list(k) == ["emb_params"] and k["emb_params"].dtype == torch.float16
    dd = load_file(save_embedding(tmp_path / "d.safetensors", "<t>", vectors, metadata={"tiforge.base_model": "m"}))
    assert list(dd) == ["<t>"]
    from safetensors import safe_open

    with safe_open(str(tmp_path / "d.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["tiforge.placeholder"] == "<t>" and meta["tiforge.num_vectors"] == "3"
    assert meta["tiforge.base_model"] == "m" and "tiforge.version" in meta


def test_reads_files_shaped_like_the_other_tools(tmp_path):
    v = torch.randn(2, 768)
    # the original paper code: 0-d tensor ids and a ParameterDict-like mapping of Parameters
    torch.save({"string_to_token": {"*": torch.tensor(265)}, "string_to_param": {"*": torch.nn.Parameter(v)}},
               tmp_path / "paper.pt")
    assert torch.equal(load_embedding(tmp_path / "paper.pt").single, v)
    # kohya SDXL and invoke-training SD
    save_file({"clip_l": torch.randn(2, 768), "clip_g": torch.randn(2, 1280)}, tmp_path / "xl.safetensors")
    xl = load_embedding(tmp_path / "xl.safetensors")
    assert xl.is_sdxl and xl.vectors["clip_g"].shape == (2, 1280)
    # and the SDXL layout converts to .pt and back unchanged
    back = load_embedding(convert(convert(tmp_path / "xl.safetensors", tmp_path / "xl.pt", "kohya"),
                                  tmp_path / "xl2.safetensors", "kohya"))
    assert all(torch.equal(back.vectors[k], xl.vectors[k]) for k in ("clip_l", "clip_g"))
    with pytest.raises(EmbeddingFileError, match="use --to kohya"):
        convert(tmp_path / "xl.safetensors", tmp_path / "xl_d.safetensors", "diffusers")
    save_file({"clip_l": torch.randn(2, 768)}, tmp_path / "half.safetensors")
    with pytest.raises(EmbeddingFileError, match="needs both clip_l and clip_g; clip_g is missing"):
        load_embedding(tmp_path / "half.safetensors")


def test_a1111_picture_embedding_is_read(vectors, tmp_path):
    import base64

    from PIL import Image, PngImagePlugin

    data = {"string_to_token": {"*": 265}, "string_to_param": {"*": {"TORCHTENSOR": vectors.tolist()}},
            "name": "pic", "step": 7}
    info = PngImagePlugin.PngInfo()
    info.add_text("sd-ti-embedding", base64.b64encode(json.dumps(data).encode()).decode())
    Image.new("RGB", (8, 8)).save(tmp_path / "pic.png", pnginfo=info)
    emb = load_embedding(tmp_path / "pic.png")
    assert emb.format == "a1111" and emb.step == 7 and torch.allclose(emb.single, vectors)
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    with pytest.raises(EmbeddingFileError, match="plain.png: this picture holds no 'sd-ti-embedding'"):
        load_embedding(tmp_path / "plain.png")


def test_a1111_layout_refuses_safetensors(vectors, tmp_path):
    with pytest.raises(EmbeddingFileError, match="needs a .pt file"):
        save_embedding(tmp_path / "x.safetensors", "<t>", vectors, format="a1111")
    assert not list(tmp_path.iterdir()), "nothing may be written half-way"


@pytest.mark.parametrize("fmt, ext", TARGETS)
def test_every_written_file_loads_in_diffusers_like_ours(fmt, ext, tiny_sd1, tmp_path):
    vectors = torch.randn(2, 32)
    path = save_embedding(tmp_path / f"e{ext}", "<t>", vectors, format=fmt)
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd1, safety_checker=None, local_files_only=True)
    if fmt == "kohya":
        pipe.load_textual_inversion(load_embedding(path).single, token="<t>", tokenizer=pipe.tokenizer,
                                    text_encoder=pipe.text_encoder)
    elif ext == ".png":
        pipe.load_textual_inversion({"<t>": load_embedding(path).single}, token="<t>")
    else:
        pipe.load_textual_inversion(str(path), token="<t>")
    theirs, _ = pipe.encode_prompt("a <t> on grass", "cpu", 1, False)

    ours_pipe = StableDiffusionPipeline.from_pretrained(tiny_sd1, safety_checker=None, local_files_only=True)
    load_embeddings_into(ours_pipe, [str(path)], ["<t>"])
    ours, _ = ours_pipe.encode_prompt("a <t> on grass", "cpu", 1, False)
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_width_mismatch_reads_like_invokeai(tiny_sd1, tmp_path):
    path = save_embedding(tmp_path / "wide.safetensors", "<w>", torch.randn(1, 1024))
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd1, safety_checker=None, local_files_only=True)
    with pytest.raises(EmbeddingFileError) as err:
        load_embeddings_into(pipe, [str(path)])
    msg = str(err.value)
    assert msg.startswith("Cannot load embedding for <w>")
    assert "trained on a model with token dimension 1024 (SD 2.x)" in msg and "token dimension 32" in msg
    assert "wide.safetensors" in msg


def test_invokeai_install_layout(vectors, tmp_path):
    src = save_embedding(tmp_path / "p.safetensors", "psychedelic", vectors)
    out = install_for_invokeai(src, tmp_path / "invokeai")
    assert out == tmp_path / "invokeai" / "embeddings" / "psychedelic" / "learned_embeds.bin"
    data = torch.load(out, weights_only=True)  # string_to_param: InvokeAI's probe measures [n, W] right
    assert data["name"] == "psychedelic" and torch.equal(data["string_to_param"]["*"], vectors)


def test_cli_convert_and_inspect(vectors, tiny_sd1, tmp_path, capsys):
    src = save_embedding(tmp_path / "in.safetensors", "<t>", vectors, metadata={"tiforge.base_model": "m"})
    assert main(["convert", str(src), str(tmp_path / "out.pt"), "--to", "a1111", "--precision", "float16"]) == 0
    assert load_embedding(tmp_path / "out.pt").single.dtype == torch.float16
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "in.safetensors"), "--model", str(tiny_sd1)]) == 0
    out = capsys.readouterr().out
    assert "format:    diffusers" in out and "vectors:   3 x 32  float32" in out
    assert "model vocabulary: median" in out and "nearest to vector 2:" in out and "tiforge.base_model: m" in out
    assert main(["convert", str(tmp_path / "missing.pt"), str(tmp_path / "x.pt"), "--to", "kohya"]) == 2
    assert "missing.pt: embedding file not found" in capsys.readouterr().err


def test_cli_generate_with_two_embeddings(tiny_sd1, tmp_path, capsys):
    a = save_embedding(tmp_path / "styleA.pt", "ignored", torch.randn(2, 32), format="a1111")
    b = save_embedding(tmp_path / "b.safetensors", "<obj>", torch.randn(1, 32))
    args = ["generate", "--model", str(tiny_sd1), "--embedding", str(a), "--embedding", str(b),
            "--prompt", "a <obj> in the style of styleA", "--steps", "2", "--width", "32", "--height", "32",
            "--count", "2", "--out", str(tmp_path / "imgs")]
    assert main(args) == 0
    assert sorted(p.name for p in (tmp_path / "imgs").iterdir()) == ["0_000.png", "0_001.png"]
    assert main([*args[:-2], "--out", str(tmp_path / "x"), "--prompt", "no trigger here"]) == 2
    assert "does not use the trigger(s)" in capsys.readouterr().err
