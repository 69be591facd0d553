"""Packaging, CLI basics, config overrides and metrics: the ground every other test stands on."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

import kunbench
from kunbench import metrics, overrides
from kunbench.cli import main
from kunbench.errors import KunbenchError
from kunbench.generators.config import PRESETS, build_config, config_from_dict

ROOT = Path(__file__).resolve().parents[1]


def test_mapped_packages_import_from_their_folders():
    import kunbench.backends
    import kunbench.generators
    import kunbench.suites

    assert Path(kunbench.generators.__file__).parent.name == "generators"
    assert Path(kunbench.backends.__file__).parent.name == "backends"
    assert Path(kunbench.suites.__file__).parent.name == "suites"


def test_wheel_installs_mapped_packages(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "wheel")], check=True, capture_output=True)
    (wheel,) = (tmp_path / "wheel").glob("kunbench-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for pkg in ("generators", "backends", "suites", "data"):
        assert f"kunbench/{pkg}/__init__.py" in names
    assert not any(n.startswith(("generators/", "backends/", "suites/")) for n in names)
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                    str(wheel)], check=True, capture_output=True)
    code = "import kunbench.generators.config as c, kunbench.backends, kunbench.suites; print(c.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(target)}, check=True)
    assert out.stdout.strip().startswith(str(target))


def test_version_and_info():
    runner = CliRunner()
    result = runner.invoke(main, ["--version"])
    assert result.exit_code == 0 and kunbench.__version__ in result.output
    result = runner.invoke(main, ["info"])
    assert result.exit_code == 0, result.output
    assert "torch" in result.output and "python" in result.output
    import torch
    if not torch.cuda.is_available():
        assert "no GPU" in result.output or "NVML" in result.output


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "kunbench", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and kunbench.__version__ in out.stdout


# ---- config overrides -------------------------------------------------------------------------

def test_set_overrides_reach_nested_and_event_knobs():
    cfg = build_config("standard", sets=overrides.parse_assignments([
        "signal.cross=0", "events.click.median_length=100", "zipf_exponent=1.2",
        "event_types=impression,click,conversion,share", "events.share.max_length=64",
    ]))
    assert cfg.signal.cross == 0.0 and cfg.zipf_exponent == 1.2
    assert cfg.events["click"].median_length == 100.0
    assert list(cfg.events) == ["impression", "click", "conversion", "share"]
    assert cfg.events["share"].max_length == 64


def test_toml_config_file(tmp_path):
    path = tmp_path / "world.toml"
    path.write_text('preset = "tiny"\nrows = 777\nevent_types = ["a", "b"]\n'
                    '[signal]\ncross = 0.0\n[events.a]\nmedian_length = 5\nmax_length = 9\n')
    cfg = build_config("standard", config_file=str(path), sets={"events.b.max_length": 60})
    assert cfg.preset == "tiny" and cfg.rows == 777 and cfg.signal.cross == 0.0
    assert cfg.events["a"].max_length == 9 and cfg.events["b"].max_length == 60


@pytest.mark.parametrize("sets, needle", [
    ({"rows": -5}, "-5"),
    ({"nonsense": 1}, "nonsense"),
    ({"events.foo.max_length": 3}, "foo"),
    ({"events.click.median_length": 5000}, "5000"),
    ({"signal.cross": "strong"}, "strong"),
    ({"signal.context": -1}, "-1"),
    ({"base_ctr": 1.5}, "1.5"),
])
def test_bad_knobs_name_the_value(sets, needle):
    with pytest.raises(KunbenchError) as info:
        build_config("tiny", sets=sets)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_unknown_preset_and_missing_file():
    with pytest.raises(KunbenchError, match="huge"):
        build_config("huge")
    with pytest.raises(KunbenchError, match="nope.toml"):
        build_config("tiny", config_file="nope.toml")


def test_config_round_trips_through_dict_and_fingerprint():
    for cfg in PRESETS.values():
        again = config_from_dict(cfg.to_dict())
        assert again == cfg and again.fingerprint() == cfg.fingerprint()
    assert PRESETS["tiny"].fingerprint() != build_config("tiny", seed=1).fingerprint()


# ---- metrics ----------------------------------------------------------------------------------

def test_ne_matches_definition_and_merges_exactly():
    rng = np.random.default_rng(0)
    p = rng.uniform(0.001, 0.2, 5000)
    y = (rng.uniform(size=p.size) < p).astype(np.int8)
    base = y.mean()
    ll = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    h = -(base * np.log(base) + (1 - base) * np.log(1 - base))
    assert metrics.ne(y, p) == pytest.approx(ll / h, rel=1e-12)
    a, b = metrics.LogLossSums(), metrics.LogLossSums()
    a.add(y[:1234], p[:1234])
    b.add(y[1234:], p[1234:])
    assert a.merge(b).ne == pytest.approx(metrics.ne(y, p), rel=1e-12)
    # predicting the base rate everywhere is NE 1 by definition
    assert metrics.ne(y, np.full(y.size, base)) == pytest.approx(1.0, rel=1e-9)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.floats(-5, 5, allow_nan=False)), min_size=2, max_size=60))
def test_auc_equals_pairwise_count(pairs):
    y = np.array([p[0] for p in pairs])
    s = np.array([p[1] for p in pairs])
    pos, neg = s[y], s[~y]
    if pos.size == 0 or neg.size == 0:
        assert math.isnan(metrics.auc(y, s))
        return
    expected = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum())
    assert metrics.auc(y, s) == pytest.approx(expected / (pos.size * neg.size), abs=1e-12)


def test_gap_closed():
    assert metrics.gap_closed(0.9, 0.8) == pytest.approx(0.5)
    assert math.isnan(metrics.gap_closed(0.9, 1.0))


def test_every_package_folder_is_listed_for_the_wheel():
    """A package folder missing from pyproject's list would vanish from wheel installs."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    mapping = {"kunbench": "kunbench", "generators": "kunbench.generators",
               "backends": "kunbench.backends", "suites": "kunbench.suites"}
    found = set()
    for folder, pkg in mapping.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((pkg, *rel)))
    assert found <= listed, f"add to pyproject packages: {sorted(found - listed)}"


def test_kernel_layer_does_not_load_the_io_layer():
    """The ops and kernels are torch only: importing them must not pull pyarrow (the loader's)."""
    code = "import sys, kunbench.kernels, kunbench.ops.jagged; sys.exit('pyarrow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_every_cited_document_is_in_the_repository():
    import re

    cited = set()
    for folder in ("kunbench", "backends", "generators", "suites", "tests"):
        for path in (ROOT / folder).rglob("*.py"):
            cited |= {(path, m) for m in re.findall(r"(?<![\w/.-])((?:docs/)[\w/.-]+\.md)", path.read_text())}
    assert cited, "the docstrings cite docs/*.md"
    missing = sorted(f"{p.relative_to(ROOT)} cites {m}" for p, m in cited if not (ROOT / m).is_file())
    assert not missing, missing
    bare = []
    for folder in ("kunbench", "backends", "generators", "suites"):
        for path in (ROOT / folder).rglob("*.py"):
            bare += [f"{path.relative_to(ROOT)}: {m}" for m in
                     re.findall(r"(?<![\w/.-])((?:models|measurement|data|world)\.md)", path.read_text())]
    assert not bare, f"cite documents by their path in the repository: {bare}"


def test_list_values_parse_one_way():
    from kunbench.backends.registry import get_backend

    spec = get_backend("wukong")
    for text, want in (("64,32", (64, 32)), ("[64, 32]", (64, 32)), ("256", (256,)), (256, (256,))):
        assert spec.make_config("tiny", {"head_mlp": text}).head_mlp == want, text
    for bad in ("", "256,,64"):
        with pytest.raises(KunbenchError, match="empty element"):
            spec.make_config("tiny", {"head_mlp": bad})
