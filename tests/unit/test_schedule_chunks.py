"""grouped_chunks: a machine's schedule writes in one transaction whenever they fit in one."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from fleetd.registry.schedule import grouped_chunks


def test_examples():
    sizes = lambda batches: [len(b) for b in batches]  # noqa: E731
    assert grouped_chunks([]) == []
    assert sizes(grouped_chunks([[0] * 10] * 25, 120)) == [120, 120, 10]  # 12 machines a batch
    assert sizes(grouped_chunks([[0] * 150, [1] * 5, [2] * 118], 120)) == [120, 35, 118]
    assert sizes(grouped_chunks([[0] * 150, [1] * 150], 120)) == [120, 120, 60]  # too large: fills


@given(st.lists(st.integers(min_value=1, max_value=30), max_size=40), st.integers(min_value=1, max_value=25))
def test_every_item_once_in_order_and_small_groups_whole(group_sizes, size):
    groups = [[(g, i) for i in range(n)] for g, n in enumerate(group_sizes)]
    batches = grouped_chunks(groups, size)
    assert [item for batch in batches for item in batch] == [item for group in groups for item in group]
    assert all(0 < len(batch) <= size for batch in batches)
    where = {item: k for k, batch in enumerate(batches) for item in batch}
    for group in groups:
        if len(group) <= size:
            assert len({where[item] for item in group}) == 1
