"""The library's functions stay short enough to read at once: one over ``LONGEST`` lines carries a comment on the
lines just above it (above its decorators) saying why it is long. Read from the source with ``ast``."""

import ast
from pathlib import Path

LIB = Path(__file__).resolve().parent.parent / "regrad_lib"
LONGEST = 60


def long_functions_without_a_reason(folder: Path = LIB) -> list[str]:
    out = []
    for file in sorted(folder.rglob("*.py")):
        lines = file.read_text(encoding="utf-8").splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            length = node.end_lineno - node.lineno + 1
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            above = lines[first - 2].strip() if first >= 2 else ""
            if length > LONGEST and not above.startswith("#"):
                out.append(f"{file.relative_to(folder.parent)}:{node.lineno} {node.name} ({length} lines)")
    return out


def test_long_functions_say_why_they_are_long():
    assert long_functions_without_a_reason() == []


def test_the_check_finds_a_long_function_without_a_comment(tmp_path):
    body = "".join(f"    x{i} = {i}\n" for i in range(LONGEST))
    (tmp_path / "m.py").write_text(f"def long():\n{body}\n\n# long: one table of constants\ndef kept():\n{body}")
    assert long_functions_without_a_reason(tmp_path) == [f"{tmp_path.name}/m.py:1 long ({LONGEST + 1} lines)"]
