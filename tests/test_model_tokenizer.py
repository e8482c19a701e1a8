"""The tiny offline tokenizer: digits and ':' alone, any text round-trips, ChatML template, deterministic."""

from must.models.tokenizer import build_tiny_tokenizer


def test_times_tokenise_digit_by_digit_and_any_text_round_trips():
    tok = build_tiny_tokenizer()
    ids = tok("from 12:05 to 1:23", add_special_tokens=False).input_ids
    toks = tok.convert_ids_to_tokens(ids)
    assert toks[toks.index("1") :][:5] == ["1", "2", ":", "0", "5"]
    text = "Ünïcode 🎵 0:57\u20131:12, naïve"
    assert tok.decode(tok(text, add_special_tokens=False).input_ids) == text


def test_chat_template_and_special_tokens():
    tok = build_tiny_tokenizer()
    text = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tok.convert_ids_to_tokens([tok.eos_token_id, tok.pad_token_id]) == ["<|im_end|>", "<|pad|>"]
    assert len(tok("<|im_end|>", add_special_tokens=False).input_ids) == 1


def test_deterministic_and_question_words_are_whole_tokens():
    a, b = build_tiny_tokenizer(), build_tiny_tokenizer()
    assert a.get_vocab() == b.get_vocab()
    for word in ("snare", "guitar", "transition", "vocals", "arousal"):
        assert len(a(" " + word, add_special_tokens=False).input_ids) == 1, word
    extra = build_tiny_tokenizer(["zyxwvut"])
    assert len(extra(" zyxwvut", add_special_tokens=False).input_ids) == 1
