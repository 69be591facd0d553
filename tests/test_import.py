"""`kunbench import` and `export`: a generated dataset survives the round trip (same histories and
labels), a rating log with side tables imports into a dataset that keeps its contract and trains,
a killed import resumes to the same bytes, and bad specs are one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from kunbench.cli import main
from kunbench.data.jagged import arrow_list_to_numpy
from kunbench.data.manifest import load_manifest


def _ok(args):
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res


def _rows(root: Path) -> dict[str, dict]:
    """Every request row of a dataset as plain values, keyed by split and row number."""
    m = load_manifest(root)
    out = {}
    for split in m.splits:
        tables = [pq.read_table(p) for p in m.files(split)]
        if not tables:
            continue
        t = pa.concat_tables(tables)
        for i in range(t.num_rows):
            out[f"{split}-{i:09d}"] = {"t": t, "i": i}
    return out


def _history(t: pa.Table, i: int, column: str) -> list[int]:
    values, offsets = arrow_list_to_numpy(t.column(column))
    return values[offsets[i]:offsets[i + 1]].tolist()


def test_export_then_import_reproduces_histories_and_labels(tiny_dataset, tmp_path):
    _ok(["export", tiny_dataset, "--out", tmp_path / "log"])
    _ok(["import", tmp_path / "log" / "import.toml", "--out", tmp_path / "back", "--quiet"])
    _ok(["inspect", tmp_path / "back", "--verify"])
    original = _rows(tiny_dataset)
    back = load_manifest(tmp_path / "back")
    ids = {e: pq.read_table(tmp_path / "back" / "ids" / f"{e}.parquet").column("id").to_pylist()
           for e in ("user", "item", "item_category")}
    seen = 0
    for split in back.splits:
        for path in back.files(split):
            t = pq.read_table(path)
            for i in range(t.num_rows):
                src = original[ids["user"][t.column("user_id")[i].as_py()]]
                o, j = src["t"], src["i"]
                assert t.column("label")[i].as_py() == o.column("click")[j].as_py()
                assert t.column("request_ts")[i].as_py() == o.column("request_ts")[j].as_py()
                assert int(ids["item"][t.column("item_id")[i].as_py()]) == o.column("ad_id")[j].as_py()
                for et in back.schema.event_types:
                    # the same events in the same time order (events of one second have no order:
                    # the import orders them by content, so a reordered log gives the same bytes)
                    got = sorted(zip(_history(t, i, f"seq_{et}_ts"),
                                     [int(ids["item"][x]) for x in _history(t, i, f"seq_{et}_item")],
                                     [int(ids["item_category"][x]) for x in _history(t, i, f"seq_{et}_category")]))
                    want = sorted(zip(*(_history(o, j, f"seq_{et}_{p}") for p in ("ts", "item", "category"))))
                    assert got == want
                    assert _history(t, i, f"seq_{et}_ts") == _history(o, j, f"seq_{et}_ts")
                seen += 1
    assert seen == len(original)


def _rating_log(root: Path) -> Path:
    """A MovieLens-shaped log: users rate items over time; items have a genre, users a gender."""
    rng = np.random.default_rng(0)
    n, users, items = 4000, 60, 150
    u = rng.integers(0, users, n)
    it = rng.integers(0, items, n)
    taste = rng.normal(size=(users, 4))
    genre = rng.integers(0, 4, items)
    rating = np.clip(np.round(3 + taste[u, genre[it]] + rng.normal(0, 0.5, n)), 1, 5).astype(np.int64)
    root.mkdir(parents=True)
    maybe_user = pa.array([None if k == 5 else int(x) for k, x in enumerate(u)], pa.int64())
    pq.write_table(pa.table({"user_id": u * 7 + 1000, "maybe_user": maybe_user, "movie_id": it + 1, "rating": rating,
                             "timestamp": 1_600_000_000 + rng.integers(0, 90 * 86400, n)}), root / "ratings.parquet")
    (root / "movies.csv").write_text("movie_id,genre,year\n" + "".join(
        f"{i + 1},g{genre[i]},{1990 + i % 30}\n" for i in range(items)))
    (root / "users.csv").write_text("user_id,gender,age\n" + "".join(
        f"{k * 7 + 1000},{'MF'[k % 2]},{20 + k % 40}\n" for k in range(users)))
    (root / "ml.toml").write_text("""
[input]
path = "ratings.parquet"
user = "user_id"
item = "movie_id"
timestamp = "timestamp"
label = "rating >= 4"
[events]
rules = [{name = "like", when = "rating >= 4"}, {name = "watch", when = "rating < 4"}]
[output]
history_max = 50
eval_fraction = 0.2
buckets = 3
[items]
path = "movies.csv"
key = "movie_id"
category = "genre"
categorical = ["year"]
[users]
path = "users.csv"
key = "user_id"
categorical = ["gender"]
dense = ["age"]
""")
    return root / "ml.toml"


def test_a_rating_log_imports_keeps_its_contract_and_trains(tmp_path):
    spec = _rating_log(tmp_path / "ml")
    _ok(["import", spec, "--out", tmp_path / "ds", "--quiet"])
    _ok(["inspect", tmp_path / "ds", "--verify"])
    m = load_manifest(tmp_path / "ds")
    cards = {c.name: c.cardinality for c in m.columns}
    assert cards["user_id"] == 60 and cards["item_id"] == 150 and cards["item_category"] == 4 + 1  # 0: unknown
    assert cards["gender"] == 3 and m.schema.event_types == ("like", "watch") and not m.has_oracle
    assert m.split_rows("train") + m.split_rows("eval") == 4000
    train_ts = pa.concat_tables([pq.read_table(p) for p in m.files("train")]).column("request_ts")
    eval_ts = pa.concat_tables([pq.read_table(p) for p in m.files("eval")]).column("request_ts")
    assert max(train_ts.to_pylist()) < min(eval_ts.to_pylist())  # split by time
    assert 0.15 < m.split_rows("eval") / 4000 < 0.25
    t = pq.read_table(m.files("train")[0])
    likes, off = arrow_list_to_numpy(t.column("seq_like_ts"))
    assert (likes < np.repeat(t.column("request_ts").to_numpy(), np.diff(off))).all()  # strictly earlier
    out = tmp_path / "res"
    _ok(["train", "--backend", "wukong", "--preset", "tiny", "-d", tmp_path / "ds", "--out", out])
    doc = json.loads(next(out.glob("train-*.json")).read_text())
    assert doc["metrics"]["auc"] > 0.5 and doc["metrics"]["gap_closed"] is None
    assert doc["dataset"]["label_source"].startswith("imported from ratings.parquet: label = rating >= 4")


def test_import_is_deterministic_and_resumes(tmp_path, monkeypatch):
    from kunbench.importer import build

    spec = _rating_log(tmp_path / "ml")
    _ok(["import", spec, "--out", tmp_path / "a", "--quiet"])
    real = build.write_bucket
    calls = []

    def dies_after_one(*args, **kw):
        if calls:
            raise KeyboardInterrupt("killed")
        calls.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(build, "write_bucket", dies_after_one)
    res = CliRunner().invoke(main, ["import", str(spec), "--out", str(tmp_path / "b"), "--quiet"])
    assert res.exit_code != 0 and not (tmp_path / "b" / "manifest.json").exists()
    monkeypatch.setattr(build, "write_bucket", real)
    _ok(["import", spec, "--out", tmp_path / "b", "--quiet"])
    for rel in ("train/part-00000.parquet", "eval/part-00002.parquet", "ids/item.parquet"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    a, b = (json.loads((tmp_path / d / "manifest.json").read_text()) for d in ("a", "b"))
    assert a["splits"] == b["splits"] and not (tmp_path / "b" / ".import").exists()
    assert "already holds this import" in _ok(["import", spec, "--out", tmp_path / "b"]).output


@pytest.mark.parametrize("edit, message", [
    (("label = \"rating >= 4\"", "label = \"rating >== 4\""), "input.label"),
    (("item = \"movie_id\"", "item = \"film\""), "no column 'film'"),
    (("buckets = 3", "buckets = 0"), "output.buckets must be an integer in [1, 1024]"),
    (("[output]", "[output]\nbogus = 1"), "output: unknown key 'bogus'"),
    (("path = \"movies.csv\"", "path = \"nope.csv\""), "items.path: no such file"),
    (("label = \"rating >= 4\"", "label = \"rating\""), "a label column must be 0 or 1"),
    (("user = \"user_id\"", "user = \"maybe_user\""), "input.user: column 'maybe_user' has empty values"),
])
def test_bad_specs_are_one_line(tmp_path, edit, message):
    spec = _rating_log(tmp_path / "ml")
    spec.write_text(spec.read_text().replace(*edit))
    res = CliRunner().invoke(main, ["import", str(spec), "--out", str(tmp_path / "ds"), "--quiet"])
    assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output, res.output
    assert not (tmp_path / "ds" / "manifest.json").exists()


def test_the_readme_behaviour_log_recipe(tmp_path):
    """The Taobao-UserBehavior recipe of the README on a header-less CSV of that shape."""
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    recipe = re.search(r'```toml\n(\[input\]\npath = "UserBehavior.csv".*?)```', readme, re.S).group(1)
    rng = np.random.default_rng(1)
    n = 3000
    behavior = rng.choice(["pv", "cart", "fav", "buy"], n, p=[0.85, 0.06, 0.05, 0.04])
    lines = [f"{u},{i},{i % 7 + 100},{b},{1511539200 + t}" for u, i, b, t in
             zip(rng.integers(1, 80, n), rng.integers(1, 300, n), behavior, rng.integers(0, 9 * 86400, n))]
    (tmp_path / "UserBehavior.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "spec.toml").write_text(recipe)
    _ok(["import", tmp_path / "spec.toml", "--out", tmp_path / "ds", "--quiet"])
    _ok(["inspect", tmp_path / "ds", "--verify"])
    m = load_manifest(tmp_path / "ds")
    assert m.schema.event_types == ("buy", "cart", "fav", "pv")
    assert {c.name: c.cardinality for c in m.columns}["item_category"] == 7 + 1  # 0: unknown
    rows = m.split_rows("train") + m.split_rows("eval")
    base = sum(m.splits[s]["base_ctr"] * m.split_rows(s) for s in ("train", "eval")) / rows
    assert rows == n and base == pytest.approx((behavior == "buy").mean())


def test_the_readme_movielens_recipe(tmp_path):
    """The MovieLens recipe of the README on files of the RecBole ml-100k shape (typed headers, tabs)."""
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    recipe = re.search(r'```toml\n(\[input\]\npath = "ml-100k.inter".*?)```', readme, re.S).group(1)
    rng = np.random.default_rng(2)
    n = 2000
    rows = zip(rng.integers(1, 50, n), rng.integers(1, 120, n), rng.integers(1, 6, n),
               874724710 + rng.integers(0, 200 * 86400, n))
    (tmp_path / "ml-100k.inter").write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + "".join(
        f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows))
    (tmp_path / "ml-100k.item").write_text("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
                                           + "".join(f"{i}\tMovie {i}\t{1980 + i % 20}\tGenre{i % 5} Drama\n"
                                                     for i in range(1, 120)))
    (tmp_path / "ml-100k.user").write_text("user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
                                           + "".join(f"{u}\t{20 + u % 30}\t{'MF'[u % 2]}\tjob{u % 4}\t0{u}\n"
                                                     for u in range(1, 50)))
    (tmp_path / "movielens.toml").write_text(recipe)
    _ok(["import", tmp_path / "movielens.toml", "--out", tmp_path / "ds", "--quiet"])
    _ok(["inspect", tmp_path / "ds", "--verify"])
    m = load_manifest(tmp_path / "ds")
    cards = {c.name: c.cardinality for c in m.columns}
    assert m.schema.event_types == ("like", "watch") and cards["item_category"] == 5 + 1
    assert cards["gender:token"] == 3 and cards["occupation:token"] == 5


def _small_log(root: Path, extra: str = "") -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    (root / "log.csv").write_text("user,item,rating,ts\n" + "".join(
        f"{u},{i},{r},{1_000_000 + k * 60 + j}\n" for k, (u, i, r, j) in enumerate(
            zip(rng.integers(1, 31, 400), rng.integers(1, 51, 400), rng.integers(1, 6, 400), rng.integers(0, 31, 400)))))
    spec = root / "s.toml"
    spec.write_text('[input]\npath = "log.csv"\nuser = "user"\nitem = "item"\ntimestamp = "ts"\n'
                    'label = "rating >= 4"\n[events]\nrules = [{name = "like", when = "rating >= 4"}, '
                    '{name = "watch", when = "rating < 4"}]\n' + extra)
    return spec


@pytest.mark.parametrize("extra", ["", "[output]\neval_fraction = 0\nbuckets = 1\n"])
def test_many_buckets_few_users_and_no_eval_split(tmp_path, extra):
    """16 buckets for 30 users leaves some buckets without eval rows (or every one, at eval_fraction 0)."""
    _ok(["import", _small_log(tmp_path / "log", extra), "--out", tmp_path / "ds", "--quiet"])
    _ok(["inspect", tmp_path / "ds", "--verify"])
    m = load_manifest(tmp_path / "ds")
    assert m.split_rows("train") + m.split_rows("eval") == 400
    assert (m.split_rows("eval") == 0) == ("eval_fraction = 0" in extra)


@pytest.mark.parametrize("spec_text, message", [
    ('[input]\npath = "log.csv"\nuser = "user"\nitem = "item"\ntimestamp = "ts"\nlabel = "rating >= 4"\n',
     "needs an [events] table"),
    ('[input]\npath = "log.csv"\nuser = "user"\nitem = "item"\ntimestamp = "ts"\nlabel = "rating == "\n'
     '[events]\ncolumn = "rating"\ntypes = ["5"]\n', "input.label: expected COLUMN OP VALUE"),
    ('[input]\npath = "empty"\nuser = "user"\nitem = "item"\ntimestamp = "ts"\nlabel = "rating >= 4"\n'
     '[events]\ncolumn = "rating"\ntypes = ["5"]\n', "no data files in"),
])
def test_spec_mistakes_read_clearly(tmp_path, spec_text, message):
    _small_log(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.toml").write_text(spec_text)
    res = CliRunner().invoke(main, ["import", str(tmp_path / "bad.toml"), "--out", str(tmp_path / "ds"), "--quiet"])
    assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output, res.output


def test_an_event_type_that_matches_nothing_is_named(tmp_path):
    spec = _small_log(tmp_path)
    spec.write_text(spec.read_text().replace('{name = "watch", when = "rating < 4"}',
                                             '{name = "watch", when = "rating > 9"}'))
    res = _ok(["import", spec, "--out", tmp_path / "ds", "--quiet"])
    assert "no history holds an event of type watch" in res.output


def test_reordered_log_gives_the_same_bytes_and_times_in_any_unit(tmp_path):
    rng = np.random.default_rng(3)
    n = 600
    t = pa.table({"user": rng.integers(0, 12, n), "item": rng.integers(0, 40, n), "y": rng.integers(0, 2, n),
                  "ts": pa.array((1_600_000_000 + rng.integers(0, 50, n)) * 1000, pa.timestamp("ms"))})
    for name, table in (("a", t), ("b", t.take(rng.permutation(n)))):  # many ties within one second
        (tmp_path / name).mkdir()
        pq.write_table(table, tmp_path / name / "log.parquet")
        (tmp_path / name / "s.toml").write_text('[input]\npath = "log.parquet"\nuser = "user"\nitem = "item"\n'
                                                'timestamp = "ts"\nlabel = "y"\n[events]\n'
                                                'rules = [{name = "seen", when = "y >= 0"}]\n[output]\nbuckets = 2\n')
        _ok(["import", tmp_path / name / "s.toml", "--out", tmp_path / name / "ds", "--quiet"])
    for rel in ("train/part-00000.parquet", "train/part-00001.parquet", "eval/part-00000.parquet"):
        assert (tmp_path / "a" / "ds" / rel).read_bytes() == (tmp_path / "b" / "ds" / rel).read_bytes(), rel
    ts = pq.read_table(tmp_path / "a" / "ds" / "train" / "part-00000.parquet").column("request_ts").to_numpy()
    assert 1_600_000_000 <= ts.min() and ts.max() < 1_600_000_050  # milliseconds became seconds


def _ms_log(root: Path, unit: str | None) -> Path:
    """The same log with its time in milliseconds, read with `timestamp_unit = unit` (None: unset)."""
    rng = np.random.default_rng(5)
    n = 300
    secs = 1_700_000_000 + np.sort(rng.integers(0, 5_000, n))
    root.mkdir()
    pq.write_table(pa.table({"user": rng.integers(0, 10, n), "item": rng.integers(0, 30, n),
                             "y": rng.integers(0, 2, n), "ts": secs * 1000 + rng.integers(0, 1000, n)}),
                   root / "log.parquet")
    unit_line = "" if unit is None else f'timestamp_unit = "{unit}"\n'
    (root / "s.toml").write_text('[input]\npath = "log.parquet"\nuser = "user"\nitem = "item"\n'
                                 f'timestamp = "ts"\n{unit_line}label = "y"\n[events]\n'
                                 'rules = [{name = "seen", when = "y >= 0"}]\n[output]\nbuckets = 1\n')
    return root / "s.toml"


def test_a_millisecond_log_needs_its_unit_and_then_imports_in_seconds(tmp_path):
    res = CliRunner().invoke(main, ["import", str(_ms_log(tmp_path / "a", None)), "--out", str(tmp_path / "a" / "ds"),
                                    "--quiet"])
    assert res.exit_code == 2 and "set input.timestamp_unit" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "a" / "ds" / "manifest.json").exists()
    _ok(["import", _ms_log(tmp_path / "b", "ms"), "--out", tmp_path / "b" / "ds", "--quiet"])
    ts = pq.read_table(tmp_path / "b" / "ds" / "train" / "part-00000.parquet").column("request_ts").to_numpy()
    assert 1_700_000_000 <= ts.min() and ts.max() < 1_700_005_000  # milliseconds, floored to seconds
    for name, unit in (("c", '"minutes"'), ("d", '["ms"]')):
        bad = _ms_log(tmp_path / name, "ms")
        bad.write_text(bad.read_text().replace('timestamp_unit = "ms"', f"timestamp_unit = {unit}"))
        res = CliRunner().invoke(main, ["import", str(bad), "--out", str(tmp_path / name / "ds"), "--quiet"])
        assert res.exit_code == 2 and "input.timestamp_unit must be one of s, ms, us, ns" in res.output, res.output


@pytest.mark.parametrize("values", [pa.array([1e19, 5.0] * 50), pa.array([-2 * 10**11, 5] * 50),
                                    pa.array([2**63 + 5, 5] * 50, pa.uint64())])
def test_timestamps_beyond_any_log_are_refused(tmp_path, values):
    pq.write_table(pa.table({"user": list(range(100)), "item": [1] * 100, "y": [1, 0] * 50, "ts": values}),
                   tmp_path / "log.parquet")
    (tmp_path / "s.toml").write_text('[input]\npath = "log.parquet"\nuser = "user"\nitem = "item"\n'
                                     'timestamp = "ts"\nlabel = "y"\n[events]\n'
                                     'rules = [{name = "seen", when = "y >= 0"}]\n')
    res = CliRunner().invoke(main, ["import", str(tmp_path / "s.toml"), "--out", str(tmp_path / "ds"), "--quiet"])
    assert res.exit_code == 2 and "input.timestamp: column 'ts'" in res.output and "Traceback" not in res.output


def test_the_default_unit_keeps_a_specs_fingerprint(tmp_path):
    from kunbench.importer.spec import load_spec

    spec = load_spec(_small_log(tmp_path))
    assert "timestamp_unit" not in spec.to_dict()  # imports made before the key resume and re-run as before
    text = (tmp_path / "s.toml").read_text()
    (tmp_path / "s.toml").write_text(text.replace('timestamp = "ts"\n', 'timestamp = "ts"\ntimestamp_unit = "ms"\n'))
    assert load_spec(tmp_path / "s.toml").to_dict()["timestamp_unit"] == "ms"


def test_an_empty_label_on_a_request_row_is_refused_not_read_as_0(tmp_path):
    rows = "".join(f"{k % 7},{k % 5},{'' if k == 30 else k % 5 + 1},{1000 + k}\n" for k in range(80))
    (tmp_path / "log.csv").write_text("u,i,rating,ts\n" + rows)
    spec = ('[input]\npath = "log.csv"\nuser = "u"\nitem = "i"\ntimestamp = "ts"\nlabel = "rating >= 4"\n{req}'
            '[events]\nrules = [{{name = "seen", when = "rating >= 0"}}]\n[output]\nbuckets = 1\n')
    (tmp_path / "a.toml").write_text(spec.format(req=""))
    res = CliRunner().invoke(main, ["import", str(tmp_path / "a.toml"), "--out", str(tmp_path / "a"), "--quiet"])
    assert res.exit_code == 2 and "input.label: column 'rating' is empty on 1 request row(s)" in res.output, res.output
    (tmp_path / "b.toml").write_text(spec.format(req='requests = "rating >= 1"\n'))
    _ok(["import", tmp_path / "b.toml", "--out", tmp_path / "b", "--quiet"])
    m = load_manifest(tmp_path / "b")
    assert m.split_rows("train") + m.split_rows("eval") == 79
    # a NaN in a float column is as empty as a blank; a 0/1 label column may be empty off the requests
    t = pa.table({"u": [k % 7 for k in range(80)], "i": [k % 5 for k in range(80)], "ts": list(range(1000, 1080)),
                  "rating": [float("nan") if k == 30 else float(k % 5 + 1) for k in range(80)],
                  "y": [None if k == 30 else k % 2 for k in range(80)]})
    pq.write_table(t, tmp_path / "log.parquet")
    (tmp_path / "c.toml").write_text(spec.format(req="").replace("log.csv", "log.parquet"))
    res = CliRunner().invoke(main, ["import", str(tmp_path / "c.toml"), "--out", str(tmp_path / "c"), "--quiet"])
    assert res.exit_code == 2 and "is empty on 1 request row(s)" in res.output, res.output
    (tmp_path / "d.toml").write_text(spec.format(req='requests = "rating >= 1"\n').replace("log.csv", "log.parquet")
                                     .replace('label = "rating >= 4"', 'label = "y"'))
    _ok(["import", tmp_path / "d.toml", "--out", tmp_path / "d", "--quiet"])


@pytest.mark.parametrize("column, values, message", [
    ("ts", pa.array([1.0, float("nan")] * 50), "holds NaN or infinite values"),
    ("y", pa.array(["good", "bad"] * 50), "holds values that are not numbers"),
])
def test_values_a_log_should_not_hold(tmp_path, column, values, message):
    cols = {"user": pa.array(list(range(100))), "item": pa.array([1] * 100), "y": pa.array([1, 0] * 50),
            "ts": pa.array(list(range(100)))}
    cols[column] = values
    pq.write_table(pa.table(cols), tmp_path / "log.parquet")
    (tmp_path / "s.toml").write_text('[input]\npath = "log.parquet"\nuser = "user"\nitem = "item"\n'
                                     'timestamp = "ts"\nlabel = "y >= 1"\n[events]\n'
                                     'rules = [{name = "seen", when = "y >= 1"}]\n')
    res = CliRunner().invoke(main, ["import", str(tmp_path / "s.toml"), "--out", str(tmp_path / "ds"), "--quiet"])
    assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output, res.output


def test_an_unknown_category_is_not_a_real_one(tmp_path):
    (tmp_path / "log.csv").write_text("u,i,y,ts\n" + "".join(f"{k % 4},{k % 3},{k % 2},{100 + k}\n"
                                                               for k in range(60)))
    (tmp_path / "items.csv").write_text("i,genre,score\n0,action,1.5\n1,,2.0\n")  # item 1: no genre; 2: absent
    (tmp_path / "s.toml").write_text('[input]\npath = "log.csv"\nuser = "u"\nitem = "i"\ntimestamp = "ts"\n'
                                     'label = "y"\n[events]\nrules = [{name = "seen", when = "y >= 0"}]\n'
                                     '[items]\npath = "items.csv"\nkey = "i"\ncategory = "genre"\ndense = ["score"]\n')
    _ok(["import", tmp_path / "s.toml", "--out", tmp_path / "ds", "--quiet"])
    ids = pq.read_table(tmp_path / "ds" / "ids" / "item_category.parquet").column("id").to_pylist()
    items = pq.read_table(tmp_path / "ds" / "ids" / "item.parquet").column("id").to_pylist()
    t = pa.concat_tables([pq.read_table(p) for p in load_manifest(tmp_path / "ds").files("train")])
    genre = {items[i]: ids[c] for i, c in zip(t.column("item_id").to_pylist(), t.column("item_category").to_pylist())}
    assert genre == {"0": "action", "1": None, "2": None}
    (tmp_path / "items.csv").write_text("i,genre,score\n0,action,high\n")
    res = CliRunner().invoke(main, ["import", str(tmp_path / "s.toml"), "--out", str(tmp_path / "ds2"), "--quiet"])
    assert res.exit_code == 2 and "'score' of items.csv holds values that are not numbers" in res.output, res.output


@pytest.mark.parametrize("table, message", [
    ("i,genre\ni1,a\ni2,b\n", "matches an ID of the log"),
    ("i,genre\n1,a\n1,b\n", "lists key '1' more than once"),
])
def test_side_tables_that_cannot_join(tmp_path, table, message):
    spec = _small_log(tmp_path)
    (tmp_path / "items.csv").write_text(table)
    spec.write_text(spec.read_text() + '[items]\npath = "items.csv"\nkey = "i"\ncategory = "genre"\n')
    res = CliRunner().invoke(main, ["import", str(spec), "--out", str(tmp_path / "ds"), "--quiet"])
    assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output, res.output


def test_a_text_label_and_keyless_side_rows(tmp_path):
    spec = _small_log(tmp_path)
    (tmp_path / "items.csv").write_text("i,genre\n1,a\n,b\n,c\n2,d\n")  # two rows without a key: dropped
    spec.write_text(spec.read_text() + '[items]\npath = "items.csv"\nkey = "i"\ncategory = "genre"\n')
    _ok(["import", spec, "--out", tmp_path / "ds", "--quiet"])
    (tmp_path / "log2.csv").write_text("user,item,y,ts\n" + "".join(f"{k % 3},{k % 5},{'yes' if k % 2 else 'no'},{k}\n"
                                                                 for k in range(50)))
    (tmp_path / "t.toml").write_text('[input]\npath = "log2.csv"\nuser = "user"\nitem = "item"\ntimestamp = "ts"\n'
                                     'label = "y"\n[events]\nrules = [{name = "seen", when = "ts >= 0"}]\n')
    res = CliRunner().invoke(main, ["import", str(tmp_path / "t.toml"), "--out", str(tmp_path / "d2"), "--quiet"])
    assert res.exit_code == 2 and "holds 'no'; a label column must be 0 or 1" in res.output, res.output
