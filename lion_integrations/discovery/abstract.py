"""Abstract execution: validity, dead statements, and the hash that keys the fitness cache.

A program is executed on symbols instead of tensors. Each value becomes a node of an expression DAG
identified by a Merkle hash: ``hash(op, child hashes)``, children sorted for commutative ops
(``+ * max min``), constants folded, and exact identities applied (``x+0 = x``, ``x*1 = x``,
``x-x = 0``, ``interp(x, y, 0) = x``, ``interp(x, y, 1) = y``, ``interp(x, x, a) = x``, ...).

A state (m or v) is live when the update reads it directly or through other live states' new values;
a state whose new value is its old one stays at its initial 0 and is folded to the constant 0.
A statement is live when it reaches the update or a live state and changes a value.

The program hash is the functional fingerprint (`equivalence`) of the live statements: the updates
they compute on a fixed random probe, rounded. Programs that compute the same updates hash equally
even when their symbols differ (``x + x`` and ``2 * x``, written-out interp, ...). When a probed
update is not finite, the symbolic key (the update's and the live states' Merkle hashes, minimised
over the m <-> v relabelling) joins the hash, so that NaN = NaN merges nothing.

A program is invalid when its update is not a full tensor (a constant or a per-tensor scalar) or
when no live value depends on the gradient g.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import lru_cache

from .equivalence import fingerprint
from .ops import CONST, KIND_NAMES, OPS, SCALAR, TENSOR, fold
from .program import INPUTS, STATES, Program

INPUT_KINDS = {"w": TENSOR, "g": TENSOR, "m": TENSOR, "v": TENSOR, "lr": SCALAR}


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:20]


@dataclass(frozen=True)
class Node:
    key: str  # Merkle hash
    kind: int
    deps: frozenset  # input names the value depends on
    value: float | None = None  # for constants


class Graph:
    """Hash-consed expression DAG with constant folding and exact algebraic identities."""

    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {}
        self.ops: dict[str, str] = {}  # node key -> op name
        self.non_finite = False

    def _add(self, node: Node) -> Node:
        return self.nodes.setdefault(node.key, node)

    def leaf(self, name: str) -> Node:
        return self._add(Node(_digest(f"in:{name}"), INPUT_KINDS[name], frozenset([name])))

    def const(self, value: float) -> Node:
        value = float(value) + 0.0  # -0.0 -> 0.0
        if value != value or value in (float("inf"), float("-inf")):
            self.non_finite = True
        return self._add(Node(_digest(f"c:{value!r}"), CONST, frozenset(), value))

    def apply(self, name: str, args: list[Node]) -> Node:
        op = OPS[name]
        if all(a.kind == CONST for a in args):
            return self.const(fold(op, [a.value for a in args]))
        same = len(args) >= 2 and args[0].key == args[1].key

        def is_const(node: Node, value: float) -> bool:
            return node.kind == CONST and node.value == value

        if name == "add":
            for a, b in (args, args[::-1]):
                if is_const(b, 0.0):
                    return a
        elif name == "mul":
            for a, b in (args, args[::-1]):
                if is_const(b, 1.0):
                    return a
        elif name == "sub":
            if is_const(args[1], 0.0):
                return args[0]
            if same:
                return self.const(0.0)
        elif name == "div" and is_const(args[1], 1.0):
            return args[0]
        elif name == "interp":
            if same or is_const(args[2], 0.0):
                return args[0]
            if is_const(args[2], 1.0):
                return args[1]
        elif name in ("max", "min") and same:
            return args[0]
        elif name in ("sign", "abs") and self.ops.get(args[0].key) == name:
            return args[0]
        children = [a.key for a in args]
        if op.commutative:
            children.sort()
        key = _digest(f"{name}({','.join(children)})")
        self.ops[key] = name
        deps = frozenset().union(*(a.deps for a in args))
        return self._add(Node(key, op.kind([a.kind for a in args]), deps))



@dataclass
class Analysis:
    """What abstract execution found: validity, statement liveness, live states and the hash."""

    valid: bool
    reason: str | None
    hash: str | None
    live: tuple[bool, ...]  # per statement: reaches a live output and changes a value
    live_states: frozenset
    zero_states: frozenset = field(default_factory=frozenset)

    @property
    def redundant(self) -> int:
        """Statements that do not affect the update sequence."""
        return self.live.count(False)


@dataclass(frozen=True)
class Symbolic:
    """The symbolic pass: validity, states folded to 0, live states, per-statement liveness and the
    canonical key of the data flow (None when invalid)."""

    reason: str | None
    zero_states: frozenset
    live_states: frozenset
    live: tuple[bool, ...]
    key: str | None


def _execute(program: Program, zero: frozenset, swap: bool) -> tuple[Graph, dict[str, Node], list[bool]]:
    """Symbolic run; returns the graph, the output nodes, and per statement whether it changed its target."""
    graph = Graph()
    rename = {"m": "v", "v": "m"} if swap else {}
    env = {}
    for name in INPUTS:
        env[name] = graph.const(0.0) if name in zero else graph.leaf(rename.get(name, name))
    changed = []
    for statement in program.statements:
        args = [env[a] if isinstance(a, str) else graph.const(a) for a in statement.args]
        node = graph.apply(statement.op, args)
        previous = env.get(statement.target)
        changed.append(previous is None or previous.key != node.key)
        env[statement.target] = node
    update, m_out, v_out = (env[name] for name in program.outputs)
    outputs = {"update": update, "m": m_out, "v": v_out}
    return graph, outputs, changed


def _live_states(outputs: dict[str, Node]) -> frozenset:
    live: set[str] = set(outputs["update"].deps & set(STATES))
    while True:
        grown = live | {dep for s in live for dep in outputs[s].deps if dep in STATES}
        if grown == live:
            return frozenset(live)
        live = grown


def _program_key(outputs: dict[str, Node], live: frozenset, swap: bool) -> str:
    order = ("v", "m") if swap else ("m", "v")
    states = [outputs[s].key if s in live else "dead" for s in order]
    return _digest("|".join([outputs["update"].key, *states]))


def symbolic(program: Program) -> Symbolic:
    """Abstractly execute `program` on symbols (see the module docstring)."""
    zero: frozenset = frozenset()
    while True:  # fold states that are never written to their initial value 0
        graph, outputs, changed = _execute(program, zero, swap=False)
        live_states = _live_states(outputs)
        stuck = {s for s in live_states if outputs[s].key == graph.leaf(s).key}
        if not stuck:
            break
        zero = zero | stuck
    update = outputs["update"]
    reason = None
    effective = update.deps.union(*(outputs[s].deps for s in live_states))
    if graph.non_finite:
        reason = "a constant expression is not finite"
    elif update.kind != TENSOR:
        reason = f"the update is a {KIND_NAMES[update.kind]}, not a tensor of the parameter's shape"
    elif "g" not in effective:
        reason = "the update does not depend on the gradient g"

    needed = {program.outputs[0], *(program.outputs[1 + STATES.index(s)] for s in live_states)}
    live = [False] * len(program.statements)
    for index in range(len(program.statements) - 1, -1, -1):
        statement = program.statements[index]
        if statement.target in needed:
            needed.discard(statement.target)
            needed.update(a for a in statement.args if isinstance(a, str))
            live[index] = changed[index]
            if not changed[index]:
                needed.add(statement.target)  # a no-op: the earlier value flows through
    key = None
    if reason is None:
        key = _program_key(outputs, live_states, swap=False)
        if not zero:  # the m <-> v relabelling (only when no state was folded, to keep it simple)
            _, swapped, _ = _execute(program, zero, swap=True)
            key = min(key, _program_key(swapped, live_states, swap=True))
    return Symbolic(reason, zero, live_states, tuple(live), key)


def subprogram(program: Program, indices: list[int]) -> Program:
    """The statements at `indices` (in order) as a program; an output whose name is no longer assigned
    falls back to its input (a state keeps its value). ValueError when that is not a well-formed program."""
    statements = tuple(program.statements[i] for i in indices)
    defined = set(INPUTS) | {s.target for s in statements}
    outputs = tuple(name if name in defined else state for name, state in zip(program.outputs, ("update", *STATES)))
    return Program(statements, outputs)


def _functional_key(program: Program, found: Symbolic) -> str:
    """The hash of a valid program: the functional fingerprint (`equivalence`) of its live statements,
    joined with the exact symbolic key when some probed update is not finite (there the numbers cannot
    tell programs apart)."""
    live = subprogram(program, [index for index, keep in enumerate(found.live) if keep])
    return _live_key(live, found.zero_states, found.key)


@lru_cache(maxsize=1 << 16)
def _live_key(live: Program, zero_states: frozenset, symbolic_key: str) -> str:
    probed = fingerprint(live, zero_states)
    return probed.digest if probed.finite else _digest(f"{probed.digest}|{symbolic_key}")


def analyze(program: Program) -> Analysis:
    """Abstractly execute `program`: validity (with a reason), live statements and states, hash."""
    found = symbolic(program)
    key = None if found.reason is not None else _functional_key(program, found)
    return Analysis(found.reason is None, found.reason, key, found.live, found.live_states, found.zero_states)


def program_hash(program: Program) -> str | None:
    """The hash of `program`'s updates (None when the program is invalid): equal for programs that
    compute the same updates (see `analyze`)."""
    return analyze(program).hash


def prune(program: Program, analysis: Analysis | None = None) -> Program:
    """`program` without its redundant statements (same hash)."""
    analysis = analysis or analyze(program)
    return subprogram(program, [index for index, keep in enumerate(analysis.live) if keep])
