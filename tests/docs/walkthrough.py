"""Reading the README's walk-through as a test reads it, and running it as a newcomer would.

A walk-through is the ```sh blocks of the README's "Walk-through" section. The first names the command that
starts the service; in the others, each command is followed by the answer it prints, as comment lines:
`# ` starts a line of the answer, `#  ` (one further space, not two: indented output keeps its indent)
continues the line above, `#` alone is an empty line, and `...` stands for anything left out (within a
line, or as a line of its own). Ids and times in an answer stand for any id or time of the same form. An
answer whose first line is an HTTP status line (`curl -i`) names the status expected; any other answer is
a 200.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DEFAULT_BASE_URL = "http://127.0.0.1:8080"

# Values that differ from run to run, and the form any value in their place must have.
_VOLATILE = re.compile(
    r"(?P<uuid>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"
    r"|(?P<time>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)"
    r"|(?P<message_id>\d{16}-\d{6,19})"
    r"|(?P<elided>\.\.\.)"
)
_FORMS = {
    "uuid": r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
    "time": r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ",
    "message_id": r"\d{16}-\d{6,19}",
    "elided": r".*?",
}
_STATUS_LINE = re.compile(r"HTTP/1\.1 (\d{3}) ")


@dataclass
class Step:
    """One command of the walk-through, and the answer the README shows for it (if any)."""

    command: str
    answer: list[str] = field(default_factory=list)

    @property
    def expected_status(self) -> int:
        match = _STATUS_LINE.match(self.answer[0]) if self.answer else None
        return int(match[1]) if match else 200

    def pattern(self) -> re.Pattern[str]:
        """The answer as a regular expression over the whole output."""
        text = "\n".join(self.answer)
        parts: list[str] = []
        position = 0
        for match in _VOLATILE.finditer(text):
            parts.append(re.escape(text[position : match.start()]))
            parts.append(_FORMS[match.lastgroup or "elided"])
            position = match.end()
        parts.append(re.escape(text[position:]))
        return re.compile("".join(parts), re.S)


def section(text: str, title: str) -> str:
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def shell_blocks(text: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", text, re.S)


def parse_block(block: str) -> list[Step]:
    steps: list[Step] = []
    pending = ""
    for line in block.splitlines():
        if line.startswith("#"):
            body = line[2:] if line.startswith("# ") else line[1:]
            if body.startswith(" ") and not body.startswith("  ") and steps[-1].answer:
                steps[-1].answer[-1] += body.lstrip()
            else:
                steps[-1].answer.append(body)
        elif line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
        elif line.strip():
            steps.append(Step(command=pending + line.strip()))
            pending = ""
    return steps


def walkthrough(text: str | None = None) -> tuple[str, list[Step]]:
    """The start command, and every step after it, in order."""
    blocks = shell_blocks(section(README.read_text() if text is None else text, "Walk-through"))
    start = blocks[0].strip()
    return start, [step for block in blocks[1:] for step in parse_block(block)]


def start_environment(start: str) -> dict[str, str]:
    """The variables the start command sets: `NAME=value ... make run`."""
    *assignments, make, target = start.split()
    assert (make, target) == ("make", "run"), start
    return dict(assignment.split("=", 1) for assignment in assignments)


# Each command runs in its own bash with the state the earlier ones exported. curl reports its status
# on stderr, so the test knows it whatever the command prints.
_RUNNER = """set -o pipefail
source "$STATE"
curl() { command curl -w '%{stderr}@@status %{http_code}\\n' "$@"; }
"""


def run_step(
    step: Step, replacements: dict[str, str], state: Path, cwd: Path | None = None
) -> tuple[str, list[int]]:
    """Run one command, with `replacements` made in it (the test's own port or Redis for the
    README's); its output (CRLF made LF, outer blank lines dropped) and the statuses of its curl calls."""
    command = step.command
    for old, new in replacements.items():
        command = command.replace(old, new)
    script = _RUNNER + command + '\nrc=$?\nexport -p > "$STATE"\nexit $rc\n'
    env = {"STATE": str(state), "PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/")}
    result = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, timeout=60, env=env, cwd=cwd
    )
    assert result.returncode == 0, (command, result.stdout, result.stderr)
    statuses = [int(s) for s in re.findall(r"@@status (\d{3})", result.stderr)]
    return result.stdout.replace("\r\n", "\n").strip("\n"), statuses
