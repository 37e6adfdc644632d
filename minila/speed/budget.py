"""The step budget: what one lookahead step feeds, chosen by expected tokens per unit of cost.

A step always feeds `last` and always emits the model's token after it. Everything else
it may feed is a bet:

- **candidate tokens**, offered by four sources: the n-gram pool (`lookahead/ngram_pool.py`:
  n-grams read in the text or guessed by the window), the copy lookup (what followed the
  latest occurrence of the context's tail), the memory (`memory.py`: what earlier
  requests produced after the same two tokens) and the successor table (`recycle.py`: a
  tree of what the model's latest rows of logits ranked highest after each token). A candidate token earns one token if it,
  and every token before it on its chain, is what greedy decoding emits there.
- **the window** (`lookahead/window.py`), whose rows emit nothing this step: they move the Jacobi
  trajectory on, and the n-grams it yields may be accepted in later steps.

**The rule.** Let p_i be the probability that node i of the merged candidate tree is
right, g the tokens per step that the window's n-grams have been earning, and c(T, R)
the price of a forward of T tokens with R rows of logits, in greedy steps (the cost curve
measured on this machine, `cost_curve.CostCurve`). The nodes at one depth are different
tokens, so at most one of them is right, and verification accepts it exactly when it is.
So a step feeding the node set K emits on average

    E = 1 + sum of p_i over K   (+ g when the window runs)

tokens and costs c(T, R) with T = 1 + |K| (+ the window's rows). The budget feeds the K
and the window choice with the largest E / c: K is a prefix of the nodes sorted by p (a
child's p never exceeds its parent's, so every such prefix is a tree), the window is on
or off. When nothing is promising K is empty and the window is off: a greedy step at
greedy cost.

**Where p comes from.** A node's p is the product along its chain of q(kind, depth): how
often a token of that kind at that depth was right, given that the tokens before it were.
The kind is the evidence its source has: the copy's match length, a pool n-gram's count
and whether the text ever contained it, a memory continuation's count, a recycled
token's rank among its predecessor's successors (the one source whose kind changes along
a chain: `Offer.kinds`). Each q starts from
a prior worth a few observations (PRIOR) and is learned within the request: once the text
has moved past a step, every chain offered there, fed or not, is scored against what
greedy decoding actually emitted (`Acceptance.score`). Scoring unfed offers too keeps the
estimates honest: a kind that was pruned still shows when it becomes good.

**The window's worth g.** Each scored step credits the window with the tokens by which
its best harvested-only n-gram beat every other offer; g is that credit per step the
window ran, from a prior.

Everything but `Acceptance`'s counters is a pure function of counts and costs, so
hypothesis tests it without a model. `FULL` is the paper's step (everything offered, the
window every step) behind the same interface.
"""

from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass, field, replace
from typing import Callable, Hashable, Protocol, Sequence

Kind = tuple[Hashable, ...]  # (source, evidence...), e.g. ("copy", 3) or ("pool", False, 1)
Cost = Callable[[int, int], float]  # (tokens fed T, rows of logits R) -> greedy steps

# kind (or, for kinds not listed, its source) -> (q at depth 0, q deeper): how often an
# offered token was right, measured with SmolLM2 on held-out prompts (MT-bench 60-69,
# HumanEval 100-109; `python bench/prior.py`). A prior, worth PRIOR_WEIGHT observations.
PRIOR: dict[Hashable, tuple[float, float]] = {
    "copy": (0.3, 0.7), ("copy", 1): (0.18, 0.65), ("copy", 2): (0.45, 0.75), ("copy", 3): (0.7, 0.8),
    "pool": (0.1, 0.5), ("pool", True, 1): (0.24, 0.6), ("pool", True, 2): (0.36, 0.7), ("pool", True, 3): (0.6, 0.8),
    "memory": (0.3, 0.6),
    # recycled: with the successor table carried across those prompts from empty (`--max-new-tokens 64`)
    "recycle": (0.03, 0.02), ("recycle", 0): (0.26, 0.34), ("recycle", 1): (0.11, 0.08), ("recycle", 2): (0.06, 0.06),
    ("recycle", 3): (0.04, 0.03),
}
PRIOR_WEIGHT = 2.0  # observations a prior rate is worth
WINDOW_PRIOR = (0.1, 4.0)  # (tokens a window step earns, steps that belief is worth)
DEEPEST = 8  # depths from here on share one rate


@dataclass(frozen=True)
class Offer:
    """A chain of tokens proposed to follow `last`, and the evidence behind it."""

    tokens: tuple[int, ...]
    kind: Kind
    kinds: tuple[Kind, ...] = ()  # one per token where the evidence changes along the chain (recycle.py)

    def kind_at(self, depth: int) -> Kind:
        return self.kinds[depth] if self.kinds else self.kind

    @property
    def harvested(self) -> bool:
        """A pool n-gram that only the window's trajectory produced."""
        return self.kind[0] == "pool" and not self.kind[1]


@dataclass(frozen=True)
class Plan:
    candidates: list[tuple[int, ...]]  # the chains to verify (shared prefixes are fed once)
    window: bool  # whether the window runs this step
    expected: float  # tokens the step should emit
    cost: float  # its price in greedy steps
    offers: tuple[Offer, ...] = ()  # what was on the table (for traces: why this plan)
    chances: tuple[tuple[float, ...], ...] = ()  # P(offer's first k+1 tokens are right)


def plan_step(
    chains: Sequence[Sequence[int]],
    chances: Sequence[Sequence[float]],
    cost: Cost,
    window_rows: int,
    window_logits: int,
    window_gain: float,
    max_nodes: int,
) -> Plan:
    """The rule of the module docstring. chances[j][k]: probability that chains[j][:k+1]
    is right. window_rows / window_logits: rows fed and rows of logits the window adds
    beyond `last`'s; 0 rows means there is no window to run."""
    best = node_chances(chains, chances)
    nodes = sorted(best, key=lambda prefix: (-best[prefix], len(prefix)))[:max_nodes]  # parents first on ties
    options = [(False, 0, 0, 0.0)] + ([(True, window_rows, window_logits, window_gain)] if window_rows else [])
    top = None  # (value, window, k, expected, cost) of the best step so far
    for window, rows, logits, gain in options:
        expected = 1.0 + gain
        for k in range(len(nodes) + 1):
            expected += best[nodes[k - 1]] if k else 0.0
            price = cost(1 + rows + k, 1 + logits + k)
            if top is None or expected / price > top[0] + 1e-12:  # ties go to the cheaper step
                top = (expected / price, window, k, expected, price)
    _, window, k, expected, price = top
    fed = nodes[:k]
    inner = {node[:-1] for node in fed}
    leaves = [node for node in fed if node not in inner]  # chains, most promising first
    return Plan(candidates=leaves, window=window, expected=expected, cost=price)


def node_chances(chains: Sequence[Sequence[int]], chances: Sequence[Sequence[float]]) -> dict[tuple[int, ...], float]:
    """The candidate tree's nodes (as prefixes) with their p. A node offered by several
    chains takes the best chance any gives it. Siblings are different tokens after the
    same prefix, so at most one is right: their chances given the parent are scaled down
    to sum to at most 1 (many weak offers for one position are not many chances)."""
    best: dict[tuple[int, ...], float] = {}
    for chain, chance in zip(chains, chances):
        for k in range(len(chain)):
            prefix = tuple(chain[: k + 1])
            best[prefix] = max(best.get(prefix, 0.0), chance[k])
    given: dict[tuple[int, ...], float] = {}  # P(node right | its parent right)
    siblings: dict[tuple[int, ...], float] = defaultdict(float)  # parent -> sum of its children's `given`
    for node, p in best.items():
        parent = best[node[:-1]] if len(node) > 1 else 1.0
        given[node] = p / parent if parent > 0 else 0.0
        siblings[node[:-1]] += given[node]
    out: dict[tuple[int, ...], float] = {}
    for node in sorted(best, key=len):  # parents before children
        out[node] = given[node] / max(1.0, siblings[node[:-1]]) * (out[node[:-1]] if len(node) > 1 else 1.0)
    return out


@dataclass
class Acceptance:
    """The learned rates q(kind, depth) and the window's worth, for one request."""

    prior: dict[str, tuple[float, float]] = field(default_factory=lambda: dict(PRIOR))
    weight: float = PRIOR_WEIGHT
    window_prior: tuple[float, float] = WINDOW_PRIOR
    tried: defaultdict = field(default_factory=lambda: defaultdict(int))  # (kind, depth) -> chains tested there
    right: defaultdict = field(default_factory=lambda: defaultdict(int))  # ... and right there
    window_credit: float = 0.0
    window_steps: int = 0
    pending: deque = field(default_factory=deque)  # steps the text has not yet moved past

    def q(self, kind: Kind, depth: int) -> float:
        first, deeper = self.prior.get(kind) or self.prior[kind[0]]
        key = (kind, min(depth, DEEPEST))
        prior = first if depth == 0 else deeper
        return (self.right.get(key, 0) + self.weight * prior) / (self.tried.get(key, 0) + self.weight)

    def chance(self, offer: Offer) -> list[float]:
        """P(offer.tokens[:k+1] is right) for every k."""
        out, p = [], 1.0
        for depth in range(len(offer.tokens)):
            p *= self.q(offer.kind_at(depth), depth)
            out.append(p)
        return out

    @property
    def window_gain(self) -> float:
        gain, steps = self.window_prior
        return (self.window_credit + gain * steps) / (self.window_steps + steps)

    def score(self, offers: Sequence[Offer], truth: Sequence[int], window_ran: bool) -> None:
        """Learn from one step, once `truth` (what greedy decoding emitted after that step's
        `last`) is known for as far as its offers reach, or the request has ended. A node
        that several chains of one kind share (the same tokens from `last` on) is one bet,
        counted once."""
        reach = {False: 0, True: 0}  # tokens the best harvested / other offer got right
        seen = set()  # (kind, node) already counted
        for offer in offers:
            depth = 0
            while depth < len(offer.tokens) and depth < len(truth):
                kind = offer.kind_at(depth)
                node = (kind, offer.tokens[: depth + 1])
                if node not in seen:
                    seen.add(node)
                    key = (kind, min(depth, DEEPEST))
                    self.tried[key] += 1
                    self.right[key] += offer.tokens[depth] == truth[depth]
                if offer.tokens[depth] != truth[depth]:
                    break
                depth += 1
            reach[offer.harvested] = max(reach[offer.harvested], depth)
        self.window_credit += max(0, reach[True] - reach[False])
        self.window_steps += window_ran

    def record(self, start: int, offers: Sequence[Offer], window_ran: bool) -> None:
        """A step whose `last` was context[start - 1]: score it once the text is known."""
        self.pending.append((start, offers, window_ran))

    def catch_up(self, context: Sequence[int], final: bool = False) -> None:
        """Score the recorded steps whose offers the context now reaches past (all of
        them when the request is `final`, with what is known)."""
        while self.pending:
            start, offers, window_ran = self.pending[0]
            reach = max((len(o.tokens) for o in offers), default=0)
            if not final and len(context) < start + reach:
                break
            self.pending.popleft()
            self.score(offers, context[start : start + reach], window_ran)


# ------------------------------------------------------------------------- the budgets


class Budget(Protocol):
    wants_more: bool  # whether sources should offer more than a full step verifies
    learns: bool  # whether plan reads the learned rates (else the loop need not score offers)

    def plan(
        self, offers: Sequence[Offer], acceptance: Acceptance, window_rows: int, window_logits: int, max_nodes: int
    ) -> Plan: ...


class FullBudget:
    """The paper's step: every offer verified, the window every step."""

    wants_more = False
    learns = False

    def plan(self, offers, acceptance, window_rows, window_logits, max_nodes) -> Plan:
        return Plan([o.tokens for o in offers], window=True, expected=float("nan"), cost=float("nan"))


FULL = FullBudget()


@dataclass(frozen=True)
class CostBudget:
    """The rule of the module docstring, priced by `cost` (e.g. CostCurve.relative)."""

    cost: Cost
    wants_more: bool = True
    learns: bool = True

    def plan(self, offers, acceptance, window_rows, window_logits, max_nodes) -> Plan:
        chains = [o.tokens for o in offers]
        chances = [acceptance.chance(o) for o in offers]
        plan = plan_step(chains, chances, self.cost, window_rows, window_logits, acceptance.window_gain, max_nodes)
        return replace(plan, offers=tuple(offers), chances=tuple(map(tuple, chances)))
