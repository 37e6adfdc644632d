"""The step layout and its mask, against the design's rule written out longhand."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minila.lookahead.layout import LAST, LOOKAHEAD, VERIFY, candidate_tree, chains, step_layout
from minila.lookahead.masks import ancestor_mask, depths

# The paper's mask figure (W=5, N=4, G=2), drawn by hand from the rule.
# rows: last | level 0 cols 1-4 | level 1 cols 0-4 | level 2 cols 0-4 | cand 0 | cand 1
PAPER_FIGURE = """
x....................
xx...................
xxx..................
xxxx.................
xxxxx................
x....x...............
xx....x..............
xxx....x.............
xxxx....x............
xxxxx....x...........
x....x....x..........
xx....x....x.........
xxx....x....x........
xxxx....x....x.......
xxxxx....x....x......
x..............x.....
x..............xx....
x..............xxx...
x.................x..
x.................xx.
x.................xxx
"""
PAPER_POSITIONS = [0, 1, 2, 3, 4, 1, 2, 3, 4, 5, 2, 3, 4, 5, 6, 1, 2, 3, 1, 2, 3]


def test_paper_figure():
    layout = step_layout(window=5, levels=3, tree_parents=chains([3, 3]))
    rows = PAPER_FIGURE.split()
    assert all(len(r) == 21 for r in rows) and len(rows) == 21
    expected = torch.tensor([[c == "x" for c in r] for r in rows])
    assert torch.equal(layout.mask, expected)
    assert layout.depth.tolist() == PAPER_POSITIONS


def describe(window: int, levels: int, candidate_lens: list[int]):
    """Each row as the design names it: ('last',), ('win', level, col), ('cand', j, k)."""
    rows = [("last",)] + [("win", 0, c) for c in range(1, window)]
    rows += [("win", lvl, c) for lvl in range(1, levels) for c in range(window)]
    rows += [("cand", j, k) for j, n in enumerate(candidate_lens) for k in range(n)]
    return rows


def position(row) -> int:
    if row[0] == "last":
        return 0
    if row[0] == "win":
        return row[1] + row[2]
    return 1 + row[2]


def sees(a, b) -> bool:
    """DESIGN.md section 3, literally: block 0 = last + level 0."""
    if a == b:
        return True
    if a[0] == "cand":
        return b[0] == "last" or (b[0] == "cand" and b[1] == a[1] and b[2] < a[2])
    if a[0] == "last":
        return False
    _, level, col = a
    in_block0 = b[0] == "last" or (b[0] == "win" and b[1] == 0)
    if in_block0:
        return position(b) <= col
    return b[0] == "win" and b[2] == col and 1 <= b[1] <= level


layouts = st.tuples(
    st.integers(1, 8), st.integers(1, 5), st.lists(st.integers(1, 5), max_size=6)
)


@settings(max_examples=60, deadline=None)
@given(layouts)
def test_mask_matches_rule(shape):
    window, levels, cand = shape
    layout = step_layout(window, levels, chains(cand))
    rows = describe(window, levels, cand)
    assert layout.size == len(rows)
    expected = torch.tensor([[sees(a, b) for b in rows] for a in rows])
    assert torch.equal(layout.mask, expected)
    assert layout.depth.tolist() == [position(r) for r in rows]
    # the rule's other half: a visible token is never at a later position
    pos = layout.depth
    assert not (layout.mask & (pos[None, :] > pos[:, None])).any()
    branch = {"last": LAST, "win": LOOKAHEAD, "cand": VERIFY}
    assert list(layout.branch) == [branch[r[0]] for r in rows]


@settings(max_examples=60, deadline=None)
@given(layouts)
def test_named_slices(shape):
    window, levels, cand = shape
    layout = step_layout(window, levels, chains(cand))
    rows = describe(window, levels, cand)
    logit_rows = layout.logit_rows.tolist()
    assert list(layout.rows_with_logits) == logit_rows  # the host copy the loop reads
    assert logit_rows[0] == 0  # the first emitted token comes from `last`
    assert len(logit_rows) == len(set(logit_rows))
    top = [rows[r] for r in logit_rows[layout.top]]
    if levels == 1:  # block 0 is the top level: `last` and the level-0 guesses
        assert top == rows[:window]
    else:
        assert top == [("win", levels - 1, c) for c in range(window)]
    nodes = [("cand", j, k) for j, n in enumerate(cand) for k in range(n)]
    for i, node in enumerate(nodes):
        assert rows[layout.first_node_row + i] == node
        assert logit_rows[layout.first_node_logit + i] == layout.first_node_row + i


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=5), max_size=8))
def test_candidate_tree_shares_prefixes(candidates):
    tree = candidate_tree(candidates)
    # every candidate is read back along its path, each node one token deeper
    for cand, path in zip(candidates, tree.paths):
        assert [tree.tokens[n] for n in path] == list(cand)
        assert [tree.parents[n] for n in path] == [-1, *path[:-1]]
    # one node per distinct prefix: nothing fed twice, nothing missing
    prefixes = {tuple(c[: k + 1]) for c in candidates for k in range(len(c))}
    assert len(tree.tokens) == len(prefixes)
    assert all(p < i for i, p in enumerate(tree.parents))
    # the mask makes a node see exactly `last` and its own prefix
    layout = step_layout(2, 1, tree.parents)
    for cand, path in zip(candidates, tree.paths):
        for k, node in enumerate(path):
            row = layout.first_node_row + node
            seen = set(layout.mask[row].nonzero().flatten().tolist())
            assert seen == {0} | {layout.first_node_row + n for n in path[: k + 1]}
            assert int(layout.depth[row]) == k + 1


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(-1, 30), min_size=1, max_size=30))
def test_ancestor_mask_is_transitive_closure(raw):
    parents = [-1 if p < 0 or p >= i else p for i, p in enumerate(raw)]
    mask = ancestor_mask(parents)
    d = depths(parents)
    for i in range(len(parents)):
        chain, j = {i}, parents[i]
        while j >= 0:
            chain.add(j)
            j = parents[j]
        assert {j for j in range(len(parents)) if mask[i, j]} == chain
        assert d[i] == len(chain) - 1


def test_pack_checks_size():
    layout = step_layout(3, 2, chains([2]))
    assert layout.pack(7, [[1, 2], [3, 4, 5]], [6, 8]) == [7, 1, 2, 3, 4, 5, 6, 8]
    with pytest.raises(ValueError, match="layout"):
        layout.pack(7, [[1, 2]], [6, 8])
