"""The README's Python examples are complete programs: each runs as written, in a fresh
interpreter (CI runs them with ``-m readme``; they are deselected by default, the pruning one
loads the demo LLM)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_the_readme_has_examples():
    assert len(BLOCKS) >= 3


@pytest.mark.readme
@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index, tmp_path):
    script = tmp_path / f"readme_{index}.py"
    script.write_text(BLOCKS[index], encoding="utf-8")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=1500, cwd=tmp_path)
    assert proc.returncode == 0, f"README example {index} failed:\n{proc.stderr[-3000:]}"
