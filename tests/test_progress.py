"""Long jobs print plain progress lines when their output is not a terminal."""

from __future__ import annotations

import io

from click.testing import CliRunner
from rich.console import Console

from kunbench.cli import main
from kunbench.progress import LineProgress, progress


def test_line_progress_prints_on_interval_and_completion():
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=200)
    prog = progress(console=console, unit="rows")
    assert isinstance(prog, LineProgress)
    prog.interval = 0.0
    with prog:
        t = prog.add_task("generating", total=10, rate="-")
        prog.advance(t, 4)
        prog.update(t, advance=6, rate="123")
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("generating: 4/10 rows (40%)")
    assert lines[-1].startswith("generating: 10/10 rows (100%)") and "rate 123" in lines[-1]


def test_terminal_gets_the_rich_bar():
    from rich.progress import Progress

    assert isinstance(progress(console=Console(file=io.StringIO(), force_terminal=True)), Progress)


def test_generate_into_a_log_prints_progress_lines(tmp_path):
    res = CliRunner().invoke(main, ["generate", "--preset", "tiny", "--rows", "300", "--out", str(tmp_path / "d")])
    assert res.exit_code == 0, res.output
    assert "generating: 300/300 rows (100%)" in res.output
