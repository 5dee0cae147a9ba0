from seal_engine.knowledge.parsing import build_training_sequences

CTX = "The Zorblax Institute was founded in 1887."


def test_lines_become_sequences_with_title_and_passage_last():
    edit = "1. It is old.\n2. It was founded in the 19th century.\n"
    assert build_training_sequences(edit, CTX, "Zorblax") == [
        "Zorblax\n1. It is old.",
        "Zorblax\n2. It was founded in the 19th century.",
        f"Zorblax\n{CTX}",
    ]


def test_preamble_before_numbered_list_is_dropped():
    edit = "Here are some implications:\n1. A\n2. B"
    assert build_training_sequences(edit, CTX, "T") == ["T\n1. A", "T\n2. B", f"T\n{CTX}"]


def test_unnumbered_first_line_kept_when_list_is_not_numbered():
    edit = "First fact.\nSecond fact."
    assert build_training_sequences(edit, CTX, "T")[:2] == ["T\nFirst fact.", "T\nSecond fact."]


def test_triple_dash_splits_and_blank_lines_and_duplicates_dropped():
    edit = "A\n\n---\n\nB\n---\nA\n---\n   \n"
    assert build_training_sequences(edit, CTX, "T") == ["T\nA", "T\nB", f"T\n{CTX}"]


def test_without_line_splitting_segments_are_kept_whole():
    edit = "line one\nline two\n---\nline three"
    assert build_training_sequences(edit, CTX, "T", split_lines=False) == [
        "T\nline one\nline two",
        "T\nline three",
        f"T\n{CTX}",
    ]


def test_self_qa_split_per_pair():
    edit = (
        "Question 1: When was it founded?\nAnswer: 1887\n"
        "Question 2: What is it?\nAnswer: An institute\n"
    )
    assert build_training_sequences(edit, CTX, "T") == [
        "T\nQuestion 1: When was it founded? Answer: 1887",
        "T\nQuestion 2: What is it? Answer: An institute",
        f"T\n{CTX}",
    ]


def test_self_qa_without_leading_label_gets_one():
    edit = " When was it founded?\nAnswer: 1887\nQuestion 2: Who?\nAnswer: Nobody"
    seqs = build_training_sequences(edit, CTX, "")
    assert seqs[0] == "Question 1: When was it founded? Answer: 1887"
    assert seqs[1] == "Question 2: Who? Answer: Nobody"


def test_empty_self_edit_gives_passage_only_and_no_title_means_no_prefix():
    assert build_training_sequences("", CTX, "") == [CTX]
    assert build_training_sequences(None, CTX, "T") == [f"T\n{CTX}"]


def test_self_edit_equal_to_passage_is_deduplicated():
    assert build_training_sequences(CTX, CTX, "T") == [f"T\n{CTX}"]
