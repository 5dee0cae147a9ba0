import json

import pytest

from seal_engine.knowledge.documents import DocumentError, load_documents


def test_txt_document(tmp_path):
    p = tmp_path / "zorblax_institute.txt"
    p.write_text("  The Zorblax Institute was founded in 1887.\n")
    [doc] = load_documents(p)
    assert doc.text == "The Zorblax Institute was founded in 1887."
    assert doc.title == "zorblax institute"
    assert doc.questions == ()


def test_json_document_and_list(tmp_path):
    p = tmp_path / "d.json"
    p.write_text(json.dumps({"title": "Z", "text": "Fact.", "questions": [{"question": "Q?", "answer": "A"}]}))
    [doc] = load_documents(p)
    assert doc.title == "Z" and doc.questions[0].answer == "A"
    p.write_text(json.dumps([{"context": "One."}, {"context": "Two."}]))
    assert [d.text for d in load_documents(p)] == ["One.", "Two."]


def test_squad_file_loads(squad_dev):
    docs = load_documents(squad_dev)
    assert len(docs) == 204
    assert all(d.questions for d in docs)


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "malformed JSON"),
        ("[]", "no documents"),
        ('{"title": "x"}', "missing string field"),
        ('{"text": "   "}', "empty"),
        ('{"text": "a", "questions": [{"question": "q"}]}', "question"),
        ('{"text": "a", "questions": "nope"}', "must be a list"),
    ],
)
def test_bad_json_documents(tmp_path, content, message):
    p = tmp_path / "bad.json"
    p.write_text(content)
    with pytest.raises(DocumentError, match=message):
        load_documents(p)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(DocumentError, match="no such file"):
        load_documents(tmp_path / "nope.txt")
    (tmp_path / "e.txt").write_text("\n  \n")
    with pytest.raises(DocumentError, match="empty"):
        load_documents(tmp_path / "e.txt")
