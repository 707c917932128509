"""Programs: straight-line assignments ``name = op(args)`` over the inputs of ``train(w, g, m, v, lr)``.

Text form (a Python function; ``+ - * /`` are infix, every other op is a call)::

    def train(w, g, m, v, lr):
        update = interp(g, m, 0.9)
        update = sign(update)
        m = interp(g, m, 0.99)
        update = update * lr
        return update, m, v

The optimizer applies ``w <- w - update`` and keeps the returned m, v as state. `parse` also takes
the body alone (``;`` or newlines between statements; ``return`` optional, default
``update, m, v``) and nested calls, which it flattens into temporaries. ``str(program)`` prints one
statement a line, and ``parse(str(p)) == p``.
"""

from __future__ import annotations

import ast
import keyword
import math
from dataclasses import dataclass

from .ops import INFIX, OPS, get_op

INPUTS = ("w", "g", "m", "v", "lr")
STATES = ("m", "v")
OUTPUTS = ("update", "m", "v")
RESERVED = frozenset({"train", "return", *OPS})

Arg = str | float
_BINOPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}


@dataclass(frozen=True)
class Statement:
    """``target = op(*args)``; an arg is a variable name (str) or a constant (float)."""

    target: str
    op: str
    args: tuple[Arg, ...]

    def __str__(self) -> str:
        args = [format_arg(a) for a in self.args]
        symbol = OPS[self.op].symbol
        if symbol:
            return f"{self.target} = {args[0]} {symbol} {args[1]}"
        return f"{self.target} = {self.op}({', '.join(args)})"


@dataclass(frozen=True)
class Program:
    """Statements run in order on the inputs; `outputs` name the (update, new m, new v) variables."""

    statements: tuple[Statement, ...]
    outputs: tuple[str, str, str] = OUTPUTS

    def __post_init__(self) -> None:
        check(self)

    def __str__(self) -> str:
        body = [f"    {s}" for s in self.statements]
        return "\n".join([f"def train({', '.join(INPUTS)}):", *body, f"    return {', '.join(self.outputs)}"])

    def __len__(self) -> int:
        return len(self.statements)

    def one_line(self) -> str:
        """The body on one line, statements separated by '; ' (parses back to the same program)."""
        parts = [str(s) for s in self.statements]
        if self.outputs != OUTPUTS:
            parts.append(f"return {', '.join(self.outputs)}")
        return "; ".join(parts)

    def constants(self) -> list[float]:
        return [a for s in self.statements for a in s.args if not isinstance(a, str)]


def format_arg(arg: Arg) -> str:
    return arg if isinstance(arg, str) else repr(float(arg))


def check(program: Program) -> None:
    """Raise ValueError unless every op is known with its arity, every read is of a defined name,
    and the outputs are defined."""
    defined = set(INPUTS)
    for index, statement in enumerate(program.statements, 1):
        op = get_op(statement.op)
        if len(statement.args) != op.arity:
            raise ValueError(
                f"statement {index} ({statement.target} = {statement.op}(...)): op {op.name!r} takes "
                f"{op.arity} argument(s), got {len(statement.args)}"
            )
        for arg in statement.args:
            if isinstance(arg, str):
                if arg not in defined:
                    raise ValueError(f"statement {index} reads {arg!r} before it is assigned")
            elif not isinstance(arg, (int, float)) or isinstance(arg, bool) or not math.isfinite(arg):
                raise ValueError(f"statement {index}: argument {arg!r} is not a variable or a finite number")
        target = statement.target
        if not target.isidentifier() or keyword.iskeyword(target) or target in RESERVED or target.startswith("_"):
            raise ValueError(f"statement {index}: invalid target name {target!r} (names are identifiers not starting with '_')")
        defined.add(statement.target)
    if len(program.outputs) != 3:
        raise ValueError(f"a program returns 3 values (update, m, v), got {len(program.outputs)}")
    for name in program.outputs:
        if name not in defined:
            raise ValueError(f"the program returns {name!r}, which is never assigned")


class _Flattener:
    """Turns a Python AST body into statements, flattening nested expressions into temporaries."""

    def __init__(self, used: set[str]) -> None:
        self.used = used
        self.statements: list[Statement] = []
        self.counter = 0

    def fresh(self) -> str:
        while True:
            self.counter += 1
            name = f"t{self.counter}"
            if name not in self.used:
                self.used.add(name)
                return name

    def operand(self, node: ast.expr, line: int) -> Arg:
        if isinstance(node, ast.Name):
            return node.id
        number = _number(node)
        if number is not None:
            return number
        target = self.fresh()
        self.assign(target, node, line)
        return target

    def assign(self, target: str, node: ast.expr, line: int) -> None:
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            op, operands = INFIX[_BINOPS[type(node.op)]], [node.left, node.right]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
            op, operands = node.func.id, node.args
            if op not in OPS:
                raise ValueError(f"line {line}: unknown op {op!r} (known: {', '.join(sorted(OPS))})")
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and _number(node) is None:
            op, operands = "sub", [ast.Constant(0.0), node.operand]
        elif isinstance(node, ast.Name) or _number(node) is not None:  # copy: x = y  ->  x = y + 0.0
            op, operands = "add", [node, ast.Constant(0.0)]
        else:
            raise ValueError(f"line {line}: cannot parse expression {ast.unparse(node)!r} (expected op(args) or a + - * / b)")
        args = tuple(self.operand(arg, line) for arg in operands)
        self.statements.append(Statement(target, op, args))


def _number(node: ast.expr) -> float | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return float(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        inner = _number(node.operand)
        if inner is not None:
            return -inner if isinstance(node.op, ast.USub) else inner
    return None


def parse(text: str) -> Program:
    """The program in `text` (see the module docstring); ValueError naming the problem otherwise."""
    if isinstance(text, Program):
        return text
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"cannot parse program: expected program text, got {text!r}")
    try:
        tree = ast.parse(text.strip())
    except SyntaxError as error:
        raise ValueError(f"cannot parse program: {error.msg} at line {error.lineno}") from None
    body = tree.body
    if len(body) == 1 and isinstance(body[0], ast.FunctionDef):
        function = body[0]
        names = [a.arg for a in function.args.args]
        if function.name != "train" or tuple(names) != INPUTS:
            raise ValueError(f"cannot parse program: expected 'def train({', '.join(INPUTS)}):', got "
                             f"'def {function.name}({', '.join(names)}):'")
        body = function.body
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    flattener = _Flattener(used)
    outputs = OUTPUTS
    for position, node in enumerate(body):
        line = getattr(node, "lineno", position + 1)
        if isinstance(node, ast.Return):
            if position != len(body) - 1:
                raise ValueError(f"line {line}: 'return' must be the last statement")
            values = node.value.elts if isinstance(node.value, ast.Tuple) else [node.value]
            if len(values) != 3 or not all(isinstance(v, ast.Name) for v in values):
                raise ValueError(f"line {line}: expected 'return update, m, v' (three names)")
            outputs = tuple(v.id for v in values)
        elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            flattener.assign(node.targets[0].id, node.value, line)
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            continue  # a docstring
        else:
            raise ValueError(f"line {line}: expected 'name = op(args)', got {ast.unparse(node)!r}")
    return Program(tuple(flattener.statements), outputs)
