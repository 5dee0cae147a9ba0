"""Stop strings end text at the earliest occurrence of any of them, in batch output and in streams alike."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from seal_engine.core.stops import stop_index, truncate_at_stop, until_stop


def test_earliest_stop_wins_whatever_the_order() -> None:
    assert truncate_at_stop("answer\nQ: next", ["Q:", "\n"]) == ("answer", True)
    assert truncate_at_stop("answer\nQ: next", ["\n", "Q:"]) == ("answer", True)
    assert truncate_at_stop("no stop here", ["###"]) == ("no stop here", False)
    assert stop_index("abc", []) == -1


def test_a_stop_split_across_deltas_is_held_back_and_cut() -> None:
    assert "".join(until_stop(["Paris", " is", "##", "# more"], ["###"])) == "Paris is"
    assert list(until_stop(["ab", "c"], [])) == ["ab", "c"]


@given(st.lists(st.text(alphabet="ab\n#", max_size=6), max_size=8), st.lists(st.sampled_from(["\n", "##", "ba"]), max_size=2))
def test_streamed_text_equals_the_batch_cut(deltas: list[str], stop: list[str]) -> None:
    assert "".join(until_stop(deltas, stop)) == truncate_at_stop("".join(deltas), stop)[0]
