from tiforge.model.clip_tokenizer import load_clip_tokenizer


def test_real_clip_ids():
    tok = load_clip_tokenizer()
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(tok) == 49408
    assert tok.model_max_length == 77


def test_first_added_token_gets_49408_and_tokenizers_are_independent():
    a = load_clip_tokenizer()
    a.add_tokens(["<new>"])
    assert a.convert_tokens_to_ids("<new>") == 49408
    b = load_clip_tokenizer()
    assert len(b) == 49408, "adding a token to one tokenizer must not leak into the next"


def test_sd2_tokenizer_pads_with_exclamation_mark():
    tok = load_clip_tokenizer(pad_token="!")
    ids = tok("hi", padding="max_length", max_length=6).input_ids
    assert ids[-1] == tok.convert_tokens_to_ids("!") == 0
