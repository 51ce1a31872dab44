"""Files hold one idea each: a module in appliance/ or ipc/ longer than about 500 lines
says at its top (its docstring) why it must be longer (issue 13's rule)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ABOUT_500 = 520  # "about 500": a few lines over is not a second idea


def test_long_modules_say_why_at_their_top() -> None:
    unexplained = []
    for path in sorted([*(REPO / "appliance").rglob("*.py"), *(REPO / "ipc").rglob("*.py")]):
        text = path.read_text()
        lines = text.count("\n")
        if lines <= ABOUT_500:
            continue
        doc = ast.get_docstring(ast.parse(text)) or ""
        if "500" not in doc:
            unexplained.append(f"{path.relative_to(REPO)} ({lines} lines)")
    assert unexplained == [], "modules over about 500 lines whose docstring does not say why"
