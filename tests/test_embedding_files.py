import pickle

import pytest
import torch
from safetensors.torch import save_file

from tiforge.embeddings.files import EmbeddingFileError, load_embedding, save_embedding


def test_reads_the_common_layouts(tmp_path):
    v = torch.randn(3, 768)
    torch.save({"<cat-toy>": v}, tmp_path / "learned_embeds.bin")
    e = load_embedding(tmp_path / "learned_embeds.bin")
    assert e.token == "<cat-toy>" and torch.equal(e.single, v)

    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": v}, "name": "mystyle", "step": 500,
                "sd_checkpoint": "abc", "sd_checkpoint_name": "v1-5"}, tmp_path / "mystyle.pt")
    e = load_embedding(tmp_path / "mystyle.pt")
    assert e.token == "mystyle" and torch.equal(e.single, v)

    save_file({"emb_params": v.half()}, tmp_path / "kohya.safetensors")
    e = load_embedding(tmp_path / "kohya.safetensors")
    assert e.single.dtype == torch.float16 and torch.equal(e.single.float(), v.half().float())

    torch.save({"<one>": torch.randn(768)}, tmp_path / "one.bin")
    assert load_embedding(tmp_path / "one.bin").single.shape == (1, 768)


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/tiforge-pwned",))


def test_malicious_pickle_is_refused_never_run(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"string_to_param": {"*": _Evil()}}, f)
    with pytest.raises(EmbeddingFileError, match="never runs code from a pickle"):
        load_embedding(path)
    import os

    assert not os.path.exists("/tmp/tiforge-pwned")


def test_bad_files_are_named(tmp_path):
    save_file({"<x>": torch.tensor([[float("nan"), 1.0]])}, tmp_path / "nan.safetensors")
    with pytest.raises(EmbeddingFileError, match="nan.safetensors: holds NaN"):
        load_embedding(tmp_path / "nan.safetensors")
    save_file({"<x>": torch.randn(2, 8)}, tmp_path / "ok.safetensors")
    data = (tmp_path / "ok.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(EmbeddingFileError, match="cut.safetensors: not a readable safetensors file"):
        load_embedding(tmp_path / "cut.safetensors")
    save_file({"a": torch.randn(2, 8), "b": torch.randn(2, 8)}, tmp_path / "two.safetensors")
    with pytest.raises(EmbeddingFileError, match="unknown embedding layout"):
        load_embedding(tmp_path / "two.safetensors")
    with pytest.raises(EmbeddingFileError, match="not found"):
        load_embedding(tmp_path / "missing.safetensors")


def test_save_refuses_nan_and_leaves_the_old_file(tmp_path):
    path = tmp_path / "e.safetensors"
    good = torch.randn(2, 8)
    save_embedding(path, "<x>", good)
    with pytest.raises(EmbeddingFileError, match="non-finite"):
        save_embedding(path, "<x>", torch.full((2, 8), float("nan")))
    assert torch.equal(load_embedding(path).single, good)
    assert [p.name for p in tmp_path.iterdir()] == ["e.safetensors"], "no temporary file may be left behind"
