"""Reading compiled HLO text: which cross-device collectives run inside `while` loops.

A collective inside a loop body or condition runs once per turn: on an accelerator every turn
then waits for the other devices (across hosts, a network round trip). The design forbids
it (docs: DESIGN.md "Accelerator rules"); `tests/train/test_no_collectives_in_loops.py`
keeps the compiled 8-device training step free of it with `collectives_in_loops`.

Input is the text of `jitted.lower(...).compile().as_text()`: a list of computations
(`name (params) -> type {` ... `}`), one instruction per line. A `while` instruction names
its `condition=` and `body=` computations; any instruction may call more (`to_apply=`,
`calls=`, `branch_computations={...}`, ...). Everything reachable from a loop's condition or
body, transitively (nested loops included), counts as inside that loop.
"""

from __future__ import annotations

import dataclasses
import re

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute",
               "all-to-all", "ragged-all-to-all", "collective-broadcast")

# `ENTRY %main.1 (...) -> ... {` or `%body.2 (...) -> ... {`; the `%` is optional.
_COMP_START = re.compile(r"^\s*(ENTRY\s+)?%?([\w.\-]+)\s*\(.*\{\s*$")
# The instruction's own name: `%x.1 = ...` or `ROOT %x.1 = ...`.
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
# An opcode is preceded by a space (after the result type) and followed by `(`; operand
# references (`%all-reduce.3,`) never are, and names end with ` =`.
_OPCODE = re.compile(r"\s([a-z][a-z0-9\-]*)\(")
_CALLED_ONE = re.compile(
    r"\b(?:condition|body|to_apply|calls|true_computation|false_computation|"
    r"scatter|select|called_computations|async_execution_thread_computation)=%?([\w.\-]+)")
_CALLED_MANY = re.compile(r"\b(?:branch_computations|called_computations|calls)=\{([^}]*)\}")
_WHILE_PARTS = re.compile(r"\b(condition|body)=%?([\w.\-]+)")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_SOURCE = re.compile(r'source_file="([^"]*)"\s+source_line=(\d+)')


@dataclasses.dataclass(frozen=True)
class Instruction:
  name: str
  opcode: str
  computation: str
  line: str

  @property
  def op_name(self) -> str:
    """The JAX name stack of the op (`jit(_step)/.../while/body/...`), '' if absent."""
    m = _OP_NAME.search(self.line)
    return m.group(1) if m else ""

  @property
  def source(self) -> str:
    """`file:line` of the JAX code that emitted the op, '' if absent."""
    m = _SOURCE.search(self.line)
    return f"{m.group(1)}:{m.group(2)}" if m else ""


@dataclasses.dataclass(frozen=True)
class Loop:
  """A `while` instruction, where it sits, and what runs inside it."""
  instruction: Instruction
  condition: str
  body: str
  inside: frozenset  # every computation reachable from condition and body


@dataclasses.dataclass
class Module:
  computations: dict  # name -> [Instruction]
  calls: dict         # name -> set of called computation names
  entry: str


def _opcode(rhs: str) -> str:
  # Skip the result type: tuple types hold parentheses, so find the first `word(` that
  # follows a space at nesting depth 0.
  depth = 0
  for i, ch in enumerate(rhs):
    if ch in "({[":
      depth += 1
    elif ch in ")}]":
      depth -= 1
    elif ch == " " and depth == 0:
      m = _OPCODE.match(rhs, i)
      if m:
        return m.group(1)
  return ""


def parse(text: str) -> Module:
  """Computations, instructions and the call graph of an HLO module's text."""
  comps: dict[str, list[Instruction]] = {}
  calls: dict[str, set] = {}
  entry, current = "", None
  for raw in text.splitlines():
    line = raw.strip()
    if current is None:
      m = _COMP_START.match(raw)
      if m and not line.startswith("HloModule"):
        current = m.group(2)
        comps[current], calls[current] = [], set()
        if m.group(1):
          entry = current
      continue
    if line == "}":
      current = None
      continue
    m = _INSTR.match(raw)
    if not m:
      continue
    ins = Instruction(m.group(1), _opcode(" " + m.group(2)), current, line)
    comps[current].append(ins)
    for c in _CALLED_ONE.findall(line):
      calls[current].add(c)
    for group in _CALLED_MANY.findall(line):
      calls[current].update(x.strip().lstrip("%") for x in group.split(",") if x.strip())
  return Module(comps, calls, entry)


def reachable(module: Module, roots) -> frozenset:
  """Every computation reachable from `roots` through calls (roots included)."""
  seen, todo = set(), list(roots)
  while todo:
    c = todo.pop()
    if c in seen or c not in module.computations:
      continue
    seen.add(c)
    todo.extend(module.calls.get(c, ()))
  return frozenset(seen)


def while_loops(module: Module) -> list[Loop]:
  """Every `while` instruction of the module (nested ones included)."""
  out = []
  for comp, instrs in module.computations.items():
    for ins in instrs:
      if ins.opcode != "while":
        continue
      parts = dict(_WHILE_PARTS.findall(ins.line))
      cond, body = parts.get("condition", ""), parts.get("body", "")
      out.append(Loop(ins, cond, body, reachable(module, [cond, body])))
  return out


def is_collective(opcode: str) -> bool:
  """all-reduce, all-gather, ... and their async `-start` / `-done` halves."""
  base = re.sub(r"-(start|done|update)$", "", opcode)
  return base in COLLECTIVES


def collectives(module: Module, computations=None) -> list[Instruction]:
  """Collective instructions in `computations` (default: the whole module)."""
  names = module.computations if computations is None else computations
  return [i for c in names for i in module.computations.get(c, ()) if is_collective(i.opcode)]


def collectives_in_loops(text_or_module) -> list[tuple[Loop, Instruction]]:
  """(loop, collective) for every collective inside some loop's condition or body.

  A collective inside nested loops is reported once per enclosing loop.
  """
  module = parse(text_or_module) if isinstance(text_or_module, str) else text_or_module
  return [(loop, ins) for loop in while_loops(module)
          for ins in collectives(module, loop.inside)]


def summary(text: str) -> dict:
  """JSON-friendly report: every loop (name stack, source) and the collectives inside."""
  module = parse(text)
  loops = while_loops(module)
  return {
      "num_while": len(loops),
      "num_collectives": len(collectives(module)),
      "loops": [{"name": l.instruction.name, "op_name": l.instruction.op_name,
                 "source": l.instruction.source,
                 "collectives": [{"opcode": i.opcode, "name": i.name, "op_name": i.op_name,
                                  "source": i.source, "in": i.computation}
                                 for i in collectives(module, l.inside)]}
                for l in loops],
  }
