"""Loader throughput.

Under pytest (small, `--benchmark-enable` to time): one pass over a small contract dataset.
As a script, the figures for the note, on a dataset directory or a standard-shaped contract one:

    python tests/bench/test_loader_bench.py --data DIR            # e.g. kunbench generate output
    python tests/bench/test_loader_bench.py --write-standard DIR --rows 20000
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataset_fixture import STANDARD_LENGTHS, write_contract_dataset  # noqa: E402
from kunbench.data.loader import ParquetBatches, measure_loader  # noqa: E402


def _small(root: Path) -> Path:
    write_contract_dataset(root, rows_per_file=(512, 512), eval_rows_per_file=(128,), num_categorical=60,
                           num_dense=8, num_multihot=3, row_group_rows=128,
                           lengths={"impression": (0, 200), "click": (0, 100), "conversion": (0, 40)})
    return root


def test_loader_one_pass(benchmark, tmp_path):
    root = _small(tmp_path / "bench")

    def one_pass():
        return sum(b.batch_size for b in ParquetBatches(root, "train", batch_size=256))

    assert benchmark(one_pass) == 1024


def test_loader_one_pass_truncated(benchmark, tmp_path):
    root = _small(tmp_path / "bench")

    def one_pass():
        return sum(b.batch_size for b in ParquetBatches(root, "train", batch_size=256, max_lengths=32))

    assert benchmark(one_pass) == 1024


def write_standard_shaped(root: Path, rows: int, rows_per_file: int = 2048, row_group_rows: int = 256) -> None:
    """300 context columns (4 entities + 276 categorical + 14 dense + 6 multi-hot), standard lengths."""
    files = [rows_per_file] * (rows // rows_per_file) + ([rows % rows_per_file] if rows % rows_per_file else [])
    write_contract_dataset(root, rows_per_file=files, eval_rows_per_file=(256,), num_categorical=276, num_dense=14,
                           num_multihot=6, lengths=STANDARD_LENGTHS, row_group_rows=row_group_rows, multihot_max=8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="existing dataset directory")
    ap.add_argument("--write-standard", help="write a standard-shaped contract dataset here first")
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--split", default="train")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--workers", default="0,2")
    ap.add_argument("--max-length", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    root = args.data
    if args.write_standard:
        root = args.write_standard
        if not (Path(root) / "manifest.json").exists():
            write_standard_shaped(Path(root), args.rows)
    if not root:
        ap.error("give --data or --write-standard")
    for w in (int(x) for x in args.workers.split(",")):
        runs = [measure_loader(root, args.split, num_workers=w, batch_size=args.batch_size,
                               max_lengths=args.max_length) for _ in range(args.repeats)]
        best = max(runs, key=lambda r: r["rows_per_s"])
        best["events_per_s"] = best["events"] / best["seconds"]
        print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in best.items()}))


if __name__ == "__main__":
    main()
