"""Progress for long jobs: a rich bar on a terminal, plain log lines everywhere else.

A rich bar draws nothing when its output is a file or a pipe (a CI log, `nohup`), so such a log
stayed silent until the job ended. `progress(...)` returns the bar on a terminal and otherwise a
`LineProgress` with the same small interface (`add_task`, `update`, `advance`, a context manager)
that prints one line per task every `interval` seconds and when the task completes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

LINE_INTERVAL_S = 15.0


@dataclass
class _Task:
    description: str
    total: float | None
    completed: float = 0.0
    fields: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    last_line: float = field(default_factory=time.perf_counter)
    done_printed: bool = False


class LineProgress:
    """`rich.progress.Progress`'s add_task / update / advance, reported as plain lines."""

    def __init__(self, console, unit: str = "", interval: float = LINE_INTERVAL_S):
        self.console, self.unit, self.interval = console, unit, interval
        self.tasks: list[_Task] = []

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            for t in self.tasks:
                if not t.done_printed and t.completed:
                    self._line(t)

    def add_task(self, description: str, total: float | None = None, **fields: Any) -> int:
        self.tasks.append(_Task(description, total, fields=dict(fields)))
        return len(self.tasks) - 1

    def advance(self, task_id: int, advance: float = 1.0) -> None:
        self.update(task_id, advance=advance)

    def update(self, task_id: int, *, completed: float | None = None, advance: float | None = None,
               total: float | None = None, **fields: Any) -> None:
        t = self.tasks[task_id]
        if total is not None:
            t.total = total
        if completed is not None:
            t.completed = completed
        if advance is not None:
            t.completed += advance
        t.fields.update(fields)
        now = time.perf_counter()
        finished = t.total is not None and t.completed >= t.total
        if (finished and not t.done_printed) or now - t.last_line >= self.interval:
            self._line(t)
            t.done_printed = finished

    def _line(self, t: _Task) -> None:
        t.last_line = time.perf_counter()
        elapsed = t.last_line - t.started
        if t.total:
            where = f"{t.completed:,.0f}/{t.total:,.0f}{' ' + self.unit if self.unit else ''} " \
                    f"({100.0 * t.completed / t.total:.0f}%)"
        else:
            where = f"{t.completed:,.0f}{' ' + self.unit if self.unit else ''}"
        extra = "".join(f", {k} {v}" for k, v in t.fields.items() if v not in (None, "", "-"))
        self.console.print(f"{t.description}: {where}, {elapsed:,.0f} s{extra}", highlight=False, soft_wrap=True)


def progress(*columns, console, unit: str = "", **kwargs):
    """A rich `Progress(*columns, console=console, **kwargs)` on a terminal, else a `LineProgress`."""
    if console is not None and not console.is_terminal:
        return LineProgress(console, unit=unit)
    from rich.progress import Progress

    return Progress(*columns, console=console, **kwargs)
