import torch

from tiforge.embeddings.files import load_embedding
from tiforge.training.checkpoints import save_checkpoint
from tiforge.training.run_folders import embedding_file_name, make_run_dir


def test_embedding_file_name_is_safe():
    assert embedding_file_name("<cat-toy>") == "cat-toy.safetensors"
    assert embedding_file_name("bruce_the_gnome") == "bruce_the_gnome.safetensors"
    assert embedding_file_name("a/b:c") == "a_b_c.safetensors"


def test_run_dirs_are_new_each_time(tmp_path):
    a, b = make_run_dir(tmp_path), make_run_dir(tmp_path)
    assert a != b and a.parent == tmp_path and b.parent == tmp_path


def test_max_checkpoints_counts_step_and_epoch_separately(tmp_path):
    v = torch.randn(2, 8)
    for i in (1, 2, 3):
        save_checkpoint(tmp_path, "step", i * 10, "<t>", v, {}, max_checkpoints=2)
        save_checkpoint(tmp_path, "epoch", i, "<t>", v, {}, max_checkpoints=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == [
        "checkpoint-epoch_00000002", "checkpoint-epoch_00000003",
        "checkpoint-step_00000020", "checkpoint-step_00000030",
    ]
    emb = load_embedding(tmp_path / "checkpoints" / "checkpoint-step_00000030" / "t.safetensors")
    assert emb.token == "<t>" and torch.equal(emb.single, v)
    assert emb.metadata["tiforge.num_vectors"] == "2"
