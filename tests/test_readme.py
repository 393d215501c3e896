"""The README's code runs as written: a fresh interpreter, no flush, and the violation still
reaches the log (drained at exit) with the user and one trace id."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_snippet_reports_the_double_charge(tmp_path: Path) -> None:
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S)
    assert code is not None, "README.md has no python block"
    script = tmp_path / "readme_snippet.py"
    script.write_text(code.group(1))
    result = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    lines = [json.loads(x) for x in result.stderr.splitlines() if x.startswith("{")]
    [violation] = [x for x in lines if x["event"] == "invariant.violated"]
    assert violation["invariant"] == "NO_DOUBLE_CHARGE"
    assert violation["user_id"] == "user_42"
    assert violation["tags"] == {"subscription_id": "sub_1", "charges_count": "2"}
    assert re.fullmatch(r"[0-9a-f]{32}", violation["trace_id"])
