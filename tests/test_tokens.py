import pytest
import torch

from tiforge.model.clip_tokenizer import load_clip_tokenizer
from tiforge.model.placeholders import (
    PlaceholderEmbedding,
    TokenError,
    add_placeholder,
    initial_vectors,
    install_placeholder_embedding,
)


@pytest.fixture
def tok():
    return load_clip_tokenizer()


def test_placeholder_gets_one_token_per_vector_from_49408(tok):
    ph = add_placeholder(tok, "<cat-toy>", 3)
    assert ph.tokens == ("<cat-toy>", "<cat-toy>_1", "<cat-toy>_2")
    assert ph.ids == (49408, 49409, 49410)
    ids = tok(ph.expand("a <cat-toy> on a <cat-toy> table")).input_ids
    assert ids[:5] == [49406, 320, 49408, 49409, 49410]
    assert ids.count(49408) == 2


def test_placeholder_that_is_a_vocabulary_word_is_refused(tok):
    with pytest.raises(TokenError, match=r"placeholder_token 'cat' is already a word .*id 2368"):
        add_placeholder(tok, "cat", 1)


def test_multi_token_initializer_is_refused_with_its_pieces(tok):
    table = torch.zeros(49408, 8)
    with pytest.raises(TokenError, match=r"initializer_token 'bruce_the_gnome' must be a single token.*splits it into"):
        initial_vectors(tok, table, num_vectors=1, initializer_token="bruce_the_gnome")


def test_initializers(tok):
    table = torch.randn(49408, 8)
    v = initial_vectors(tok, table, num_vectors=3, initializer_token="dog")
    assert v.shape == (3, 8) and torch.equal(v[2], table[1929])
    p = initial_vectors(tok, table, num_vectors=1, initial_phrase="small plush toy")
    ids = tok.encode("small plush toy", add_special_tokens=False)
    assert p.shape == (len(ids), 8) and torch.equal(p, table[ids])


def test_placeholder_embedding_routes_new_ids_to_vectors_only():
    base = torch.nn.Embedding(10, 4)
    module = PlaceholderEmbedding(base, torch.randn(2, 4), first_id=10)
    ids = torch.tensor([[1, 10, 11, 3]])
    out = module(ids)
    assert torch.equal(out[0, 0], base.weight[1]) and torch.equal(out[0, 3], base.weight[3])
    assert torch.equal(out[0, 1], module.vectors[0]) and torch.equal(out[0, 2], module.vectors[1])
    base.requires_grad_(False)
    out.sum().backward()
    assert base.weight.grad is None
    assert torch.equal(module.vectors.grad, torch.ones(2, 4))


def test_installed_embedding_keeps_fp32_vectors_with_half_table(tok):
    from transformers import CLIPTextConfig, CLIPTextModel

    te = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, eos_token_id=49407)).to(torch.bfloat16)
    ph = add_placeholder(tok, "<z>", 2)
    module = install_placeholder_embedding(te, ph, torch.randn(2, 16))
    assert module.vectors.dtype == torch.float32 and te.get_input_embeddings() is module
    out = te(torch.tensor([tok(ph.expand("a <z>")).input_ids]))[0]
    assert out.dtype == torch.bfloat16
