"""Bad inputs found by a hostile-user sweep: each gets one clean line (exit 2, no traceback) and
writes nothing."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from kunbench.cli import main


def _result_doc(tmp_path):
    from kunbench.results import make_document, measurement, write_document

    doc = make_document("qps", [measurement("qps", "wukong", "bs=8", "train_qps", 10.0, unit="ex/s",
                                            better="higher")], backends=["wukong"], config={}, dataset=None,
                        environment={}, timing={})
    return write_document(doc, tmp_path / "res")


def _bad_toml(tmp_path):
    (tmp_path / "bad.toml").write_bytes(b"\xff\xfe suite = 1")
    return ["run", "--suite", "mfu", "--config", str(tmp_path / "bad.toml"), "--out", str(tmp_path / "out")]


CASES = [
    ("non-UTF-8 config", _bad_toml, "is not UTF-8 text"),
    ("repeated event type", lambda t: ["generate", "--preset", "tiny", "--rows", "100", "--set",
                                       "event_types=click,click", "--out", str(t / "data")],
     "event_types names click more than once"),
    ("report into a missing directory", lambda t: ["report", str(_result_doc(t)), "--format", "md", "-o",
                                                   str(t / "missing" / "r.md")], "does not exist"),
]


@pytest.mark.parametrize("name, make_argv, fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clean_line(tmp_path, monkeypatch, name, make_argv, fragment):
    monkeypatch.setenv("KUNBENCH_CACHE", str(tmp_path / "cache"))
    argv = make_argv(tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    res = CliRunner().invoke(main, argv)
    assert res.exit_code == 2, res.output
    assert fragment in res.output and "Traceback" not in res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written
