"""``IdTable`` behaves as the dict it replaces, in its list form and in its dict form."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.beat.table import SPARSE_SLACK, IdTable

ids = st.integers(min_value=0, max_value=3 * SPARSE_SLACK)
far_ids = st.integers(min_value=0, max_value=10**9)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("set"), st.one_of(ids, far_ids), st.integers()),
        st.tuples(st.just("pop"), st.one_of(ids, far_ids), st.none()),
    ),
    max_size=200,
)


@settings(max_examples=300, deadline=None)
@given(highest=st.integers(0, 2000), count=st.integers(0, 500), ops=operations)
def test_it_agrees_with_a_dict(highest, count, ops):
    table: IdTable[int] = IdTable(highest, count)
    model: dict[int, int] = {}
    for op, key, value in ops:
        if op == "set":
            table[key] = value
            model[key] = value
        else:
            assert table.pop(key, None) == model.pop(key, None)
        assert len(table) == len(model)
    assert dict(table.items()) == model
    assert sorted(table) == sorted(model)
    for key in list(model)[:20]:
        assert table[key] == model[key]
        assert key in table
    assert table.get(-1) is None
    with pytest.raises(KeyError):
        table[10**12]


def test_dense_ids_are_held_in_a_list_and_a_far_id_turns_it_into_a_dict():
    table: IdTable[str] = IdTable(highest=100, count=90)
    table[5] = "a"
    assert table._list is not None

    table[10**8] = "far"  # an id far beyond the others: no 100-million-slot list

    assert table._list is None
    assert dict(table.items()) == {5: "a", 10**8: "far"}
