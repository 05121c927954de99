import pytest

from fewstep.discrete.corpus import Document, python_documents, split_documents, token_blocks


def test_python_corpus_holds_prose_and_code_split_by_document(small_corpus):
    c = small_corpus
    kinds = {d.kind for d in c.train} | {d.kind for d in c.held_out}
    assert kinds == {"docs", "code"}
    train, held = {d.name for d in c.train}, {d.name for d in c.held_out}
    assert not train & held  # no document on both sides
    assert 0.04 < len(held) / (len(train) + len(held)) < 0.2  # about HELD_OUT
    assert any("for" in d.name for d in c.train + c.held_out if d.kind == "docs")
    assert c.describe()["python"].count(".") == 2 and len(c.fingerprint) == 16


def test_split_is_fixed_by_names_not_order_and_fingerprint_sees_text():
    docs = [Document(f"docs:{i}", "docs", f"text {i}") for i in range(60)]
    a, b = split_documents(docs), split_documents(list(reversed(docs)))
    assert a.held_out == b.held_out and a.fingerprint == b.fingerprint
    fewer = split_documents(docs[:-1])  # removing one document moves no other across splits
    assert {d.name for d in fewer.held_out} <= {d.name for d in a.held_out}
    changed = split_documents([Document(d.name, d.kind, d.text + "!") if d.name == "docs:3" else d for d in docs])
    assert changed.fingerprint != a.fingerprint


def test_split_errors_name_the_fix():
    with pytest.raises(ValueError, match="too small to split"):
        split_documents([Document("docs:a", "docs", "x")])
    with pytest.raises(ValueError, match="unique"):
        split_documents([Document("docs:a", "docs", "x"), Document("docs:a", "docs", "y")])
    two = split_documents([Document("docs:a", "docs", "x"), Document("docs:b", "docs", "y")])
    assert len(two.train) == len(two.held_out) == 1  # never an empty side
    with pytest.raises(ValueError, match="choose from"):
        python_documents(["poetry"])


def test_token_blocks_cut_documents_into_rows(small_tokenizer, small_corpus):
    docs = small_corpus.train[:5]
    rows = token_blocks(docs, small_tokenizer.encode, 32, small_tokenizer.sep_id)
    assert rows.ndim == 2 and rows.shape[1] == 32 and rows.dtype.is_floating_point is False
    assert int(rows.max()) < small_tokenizer.vocab_size and (rows == small_tokenizer.sep_id).any()
    with pytest.raises(ValueError, match="fewer than one sequence"):
        token_blocks([Document("docs:a", "docs", "hi")], small_tokenizer.encode, 64, small_tokenizer.sep_id)
