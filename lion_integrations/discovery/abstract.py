"""Abstract execution: validity, dead statements, and a canonical hash of the data flow.

A program is executed on symbols instead of tensors. Each value becomes a node of an expression DAG
identified by a Merkle hash: ``hash(op, child hashes)``, children sorted for commutative ops
(``+ * max min``), constants folded, and exact identities applied (``x+0 = x``, ``x*1 = x``,
``x-x = 0``, ``interp(x, y, 0) = x``, ``interp(x, y, 1) = y``, ``interp(x, x, a) = x``, ...).

A state (m or v) is live when the update reads it directly or through other live states' new values;
a state whose new value is its old one stays at its initial 0 and is folded to the constant 0.
The program hash covers the update and the live states' new values (dead states hash as 'dead'),
minimised over the m <-> v relabelling, so programs that compute the same updates hash equally.

A program is invalid when its update is not a full tensor (a constant or a per-tensor scalar) or
when no live value depends on the gradient g.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

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


def analyze(program: Program) -> Analysis:
    """Abstractly execute `program`: validity (with a reason), live statements and states, canonical hash."""
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
    if reason is not None:
        return Analysis(False, reason, None, tuple(live), live_states, zero)
    key = _program_key(outputs, live_states, swap=False)
    if not zero:  # the m <-> v relabelling (only when no state was folded, to keep it simple)
        _, swapped, _ = _execute(program, zero, swap=True)
        key = min(key, _program_key(swapped, live_states, swap=True))
    return Analysis(True, None, key, tuple(live), live_states, zero)


def program_hash(program: Program) -> str | None:
    """The canonical hash of `program`'s data flow (None when the program is invalid)."""
    return analyze(program).hash


def prune(program: Program, analysis: Analysis | None = None) -> Program:
    """`program` without its redundant statements (same hash)."""
    analysis = analysis or analyze(program)
    statements = tuple(s for s, keep in zip(program.statements, analysis.live) if keep)
    defined = set(INPUTS) | {s.target for s in statements}
    outputs = tuple(name if name in defined else state for name, state in zip(program.outputs, ("update", *STATES)))
    return Program(statements, outputs)
