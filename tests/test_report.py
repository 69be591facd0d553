"""kunbench report: table / md / csv formats, presentation tables, pivots, plots."""

from __future__ import annotations

import csv
import io

import pytest
from click.testing import CliRunner

from kunbench.cli import main
from kunbench.results import make_document, measurement, write_result
from kunbench.results.report import csv_text, fmt_cell, markdown, pivot

ENV = {"python": "3.11", "torch": "2.4", "cpu": "AMD EPYC", "cpu_count": 2,
       "gpu": {"available": False, "reason": "no GPU"}, "device": "cpu", "dtype": "fp32", "world_size": 1,
       "git_sha": "0123456789abcdef"}


def qps_doc():
    ms = []
    for b in ("wukong", "interformer"):
        for bs in (64, 256):
            ms.append(measurement("qps", b, f"bs={bs}", "infer_qps", 100.0 * bs, unit="ex/s", better="higher",
                                  samples=[99.0 * bs, 101.0 * bs], batch_size=bs))
            ms.append(measurement("qps", b, f"bs={bs}", "train_qps", 30.0 * bs, unit="ex/s", better="higher",
                                  samples=[29.0 * bs, 31.0 * bs], batch_size=bs))
    return make_document("qps", ms, backends=["wukong", "interformer"], config={}, dataset=None,
                         environment=ENV, timing={"total_s": 1.0})


def table_doc():
    rows = [{"row": "full", "ne": 0.91234, "ne_spread": 0.001, "dne": None},
            {"row": "summary pma", "ne": 0.9131, "ne_spread": 0.001, "dne": 0.08, "dne_spread": 0.05}]
    ms = [measurement("ablation", "kunlun", r["row"], "ne", r["ne"], better="lower", spread=r["ne_spread"])
          for r in rows]
    t = {"title": "ablation test", "columns": [{"key": "row", "header": "row"},
                                               {"key": "ne", "header": "NE", "fmt": ".5f", "pm": "ne_spread"},
                                               {"key": "dne", "header": "ΔNE %", "fmt": "+.2f", "pm": "dne_spread"}],
         "rows": rows, "notes": ["a table note"]}
    extra = {"ablation_rows": [{"row": "full", "delta_ne_pct": None, "delta_flops_pct": None,
                                "delta_qps_train_pct": None},
                               {"row": "summary pma", "delta_ne_pct": 0.08, "delta_flops_pct": -3.0,
                                "delta_qps_train_pct": 2.0}]}
    return make_document("ablation", ms, backends=["kunlun"], config={}, dataset=None, environment=ENV,
                         timing={"total_s": 1.0}, tables=[t], notes=["doc note"], extra=extra)


def scaling_doc():
    pts = [{"label": f"x{f}", "flops": 1e5 * f, "ne": 0.95 - 0.01 * i, "ne_spread": 0.002}
           for i, f in enumerate((0.25, 0.5, 1, 2, 4))]
    fit = {"eta": 0.0144, "ne0": 0.93, "c0": 1e5, "r2": 0.99}
    return make_document("scaling", [measurement("scaling", "wukong", "fit", "eta", 0.0144, better="higher")],
                         backends=["wukong"], config={}, dataset=None, environment=ENV, timing={},
                         extra={"scaling": {"wukong": {"points": pts, "fit": fit}}})


def test_fmt_cell():
    assert fmt_cell(None) == "n/a"
    assert fmt_cell(0.123456, ".3f") == "0.123"
    assert fmt_cell(0.08, "+.2f", 0.05) == "+0.08 ± 0.05"
    assert fmt_cell(12345, ",") == "12,345"
    assert fmt_cell(True) == "yes"
    assert fmt_cell("text") == "text"


def test_pivot_rows_and_columns():
    t = pivot(qps_doc())
    assert len(t["rows"]) == 4
    keys = [c["key"] for c in t["columns"]]
    assert keys[:3] == ["suite", "backend", "variant"] and "infer_qps" in keys and "train_qps" in keys


def test_markdown_and_csv():
    docs = [qps_doc(), table_doc()]
    md = markdown(docs)
    assert "| backend" in md and "infer_qps (ex/s)" in md
    assert "0.91234 ± 0.00100" in md and "+0.08 ± 0.05" in md and "a table note" in md
    rows = list(csv.DictReader(io.StringIO(csv_text(docs))))
    assert len(rows) == 8 + 2
    r = next(r for r in rows if r["backend"] == "wukong" and r["variant"] == "bs=64" and r["metric"] == "infer_qps")
    assert float(r["value"]) == 6400.0 and float(r["spread"]) > 0 and r["n_samples"] == "2"


@pytest.mark.parametrize("fmt", ["table", "md", "csv"])
def test_report_cli_formats(tmp_path, fmt):
    p1 = write_result(qps_doc(), tmp_path)
    p2 = write_result(table_doc(), tmp_path)
    res = CliRunner().invoke(main, ["report", str(p1), str(p2), "--format", fmt])
    assert res.exit_code == 0, res.output
    assert "interformer" in res.output
    if fmt == "csv":
        assert res.output.splitlines()[0].startswith("source,created,suite")
    else:
        assert "summary pma" in res.output


def test_report_directory_and_output(tmp_path):
    write_result(qps_doc(), tmp_path / "r")
    out = tmp_path / "report.md"
    res = CliRunner().invoke(main, ["report", str(tmp_path / "r"), "--format", "md", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "infer_qps" in out.read_text()


def test_report_plots(tmp_path):
    pytest.importorskip("matplotlib")
    paths = [write_result(d, tmp_path / "r") for d in (qps_doc(), table_doc(), scaling_doc())]
    res = CliRunner().invoke(main, ["report", *map(str, paths), "--format", "csv", "--plot", str(tmp_path / "plots")])
    assert res.exit_code == 0, res.output
    pngs = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert any(n.startswith("scaling-") for n in pngs)
    assert any(n.startswith("ablation-") for n in pngs)
    assert any(n.startswith("qps-") for n in pngs)
    for p in (tmp_path / "plots").glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_bad_file(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text('{"hello": 1}')
    res = CliRunner().invoke(main, ["report", str(bad)])
    assert res.exit_code == 2 and "x.json" in res.output and "not a kunbench result" in res.output
