import pytest

from fewstep.discrete import TextTokenizer, train_tokenizer


def test_bpe_round_trips_any_text_and_compresses_python(small_tokenizer, small_corpus):
    tok = small_tokenizer
    text = small_corpus.held_out[0].text[:2000]  # text it never saw
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert len(ids) < 0.6 * len(text.encode())  # BPE merges: fewer ids than bytes
    odd = "naïve ∑ 😀 [MASK] [SEP]"
    assert tok.decode(tok.encode(odd)) == odd  # no unknown text; special strings stay text
    assert tok.mask_id not in tok.encode(odd) and tok.sep_id not in tok.encode(odd)


def test_specials_decode_readably_and_bad_ids_are_named(small_tokenizer):
    tok = small_tokenizer
    ids = tok.encode("def f():") + [tok.mask_id, tok.sep_id] + tok.encode("x")
    assert tok.decode(ids) == "def f():_\nx"
    with pytest.raises(ValueError, match=f"token id {tok.vocab_size} is outside"):
        tok.decode([0, tok.vocab_size])


def test_tokenizer_saves_loads_and_trains_deterministically(small_tokenizer, small_corpus, tmp_path):
    path = small_tokenizer.save(tmp_path / "tok.json")
    back = TextTokenizer.load(path)
    assert back.vocab_size == small_tokenizer.vocab_size and back.encode("import os") == small_tokenizer.encode("import os")
    again = train_tokenizer([d.text for d in small_corpus.train], vocab_size=400)
    assert again.to_json() == small_tokenizer.to_json()
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(["x"], vocab_size=100)
    with pytest.raises(ValueError, match="not a tokenizer JSON"):
        TextTokenizer.from_json("{}")
