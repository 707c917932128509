"""Recognizing Lion's form in a program, by the algebra of what it computes.

A program is Lion-form when, after pruning, its outputs are (any order of arguments, any chain of
copies, sums, differences, constant factors and constant divisions)

    update = k * lr * sign(a*g + b*s)   [+ d * w  or  + d * lr * w]     k, a, b > 0 (or all signs flipped), d >= 0
    s      = (1-c)*g + c*s                                             0 < c < 1

for a state s (m or v): the sign of an interpolation of gradient and momentum, the momentum an EMA
of the gradient, and at most a weight-decay term besides. `linear_terms` writes an expression as a
sum of coefficient x product of factors, expanding +, -, * and /-by-a-constant and interp with a
constant weight; every other op is one factor whose arguments are themselves in that form.
"""

from __future__ import annotations

from .abstract import prune
from .program import INPUTS, STATES, Program

Terms = dict[tuple, float]  # product of factors (sorted) -> coefficient
MAX_TERMS = 32  # expressions that expand to more terms are too complex to be Lion's form


def _expressions(program: Program) -> dict[str, object]:
    """Output expressions as nested (op, args) tuples over the inputs."""
    env: dict[str, object] = {name: name for name in INPUTS}
    for statement in program.statements:
        env[statement.target] = (statement.op, tuple(env[a] if isinstance(a, str) else a for a in statement.args))
    return {"update": env[program.outputs[0]], "m": env[program.outputs[1]], "v": env[program.outputs[2]]}


def _add(left: Terms, right: Terms, scale: float = 1.0) -> Terms:
    total = dict(left)
    for factors, coefficient in right.items():
        total[factors] = total.get(factors, 0.0) + scale * coefficient
    return {factors: c for factors, c in total.items() if c != 0.0}


def _product(left: Terms, right: Terms) -> Terms | None:
    if len(left) * len(right) > MAX_TERMS:
        return None
    total: Terms = {}
    for left_factors, a in left.items():
        for right_factors, b in right.items():
            factors = tuple(sorted(left_factors + right_factors, key=repr))
            total = _add(total, {factors: a * b})
    return total


def _factor(node) -> tuple:
    """A factor that does not expand: (op, canonical form of each argument)."""
    op, args = node
    return (op, tuple(canonical(arg) for arg in args))


def canonical(node):
    """A hashable normal form of an expression: its terms, sorted (or the bare node when too complex)."""
    terms = linear_terms(node)
    return node if terms is None else tuple(sorted(terms.items(), key=repr))


def linear_terms(node) -> Terms | None:
    """`node` as {factors: coefficient}; None when it expands to more than MAX_TERMS terms."""
    if isinstance(node, float):
        return {(): node} if node else {}
    if isinstance(node, str):
        return {(node,): 1.0}
    op, args = node
    parts = [linear_terms(arg) for arg in args]
    if op in ("add", "sub") and None not in parts:
        return _add(parts[0], parts[1], 1.0 if op == "add" else -1.0)
    if op == "mul" and None not in parts:
        return _product(parts[0], parts[1])
    if op == "div" and isinstance(args[1], float) and args[1] != 0.0 and parts[0] is not None:
        return {factors: c / args[1] for factors, c in parts[0].items()}
    if op == "interp" and isinstance(args[2], float) and None not in parts[:2]:
        weight = args[2]
        return _add({f: (1.0 - weight) * c for f, c in parts[0].items()}, parts[1], weight)
    return {(_factor(node),): 1.0}


def _ema_weight(terms: Terms | None, state: str) -> float | None:
    """c when terms == (1-c)*g + c*state with 0 < c < 1."""
    if terms is None or set(terms) != {("g",), (state,)}:
        return None
    weight = terms[(state,)]
    return weight if 0.0 < weight < 1.0 and abs(terms[("g",)] + weight - 1.0) < 1e-9 else None


def _sign_of_interpolation(factor, state: str) -> float:
    """+1 or -1 when `factor` is sign(a*g + b*state) with a, b of that sign; 0 otherwise."""
    if not (isinstance(factor, tuple) and factor[0] == "sign"):
        return 0.0
    (inner,) = factor[1]
    if not isinstance(inner, tuple) or len(inner) != 2:
        return 0.0
    terms = dict(inner)
    if set(terms) != {("g",), (state,)}:
        return 0.0
    a, b = terms[("g",)], terms[(state,)]
    return 1.0 if a > 0 and b > 0 else -1.0 if a < 0 and b < 0 else 0.0


def is_lion_form(program: Program) -> bool:
    """Whether `program` computes Lion's update (see the module docstring), for state m or v."""
    outputs = _expressions(prune(program))
    update = linear_terms(outputs["update"])
    if not update:
        return False
    for state in STATES:
        if _ema_weight(linear_terms(outputs[state]), state) is None:
            continue
        sign_terms, other_terms = [], []
        for factors, coefficient in update.items():
            rest = [f for f in factors if f != "lr"]
            if len(factors) == 2 and len(rest) == 1 and _sign_of_interpolation(rest[0], state):
                sign_terms.append(coefficient * _sign_of_interpolation(rest[0], state))
            else:
                other_terms.append((factors, coefficient))
        decay_only = all(factors in (("w",), ("lr", "w")) and c > 0 for factors, c in other_terms)
        if len(sign_terms) == 1 and sign_terms[0] > 0 and decay_only:
            return True
    return False
