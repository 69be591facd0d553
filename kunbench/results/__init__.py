"""Result documents: the schema (schema.py), where they are written and read (store.py), and
what reads them (compare.py, report.py, plots.py)."""

from kunbench.results.schema import (BETTER, RESULT_SCHEMA_VERSION, REQUIRED_KEYS, SUITE_KIND, TRAIN_METRICS,
                                     environment_summary, finite, key_of, make_document, measurement,
                                     measurements_of, validate)
from kunbench.results.store import (DEFAULT_RESULTS_DIR, atomic_write_json, expand_paths, load, load_many,
                                    preflight_out_dir, result_name, write_result)

__all__ = ["BETTER", "DEFAULT_RESULTS_DIR", "REQUIRED_KEYS", "RESULT_SCHEMA_VERSION", "SUITE_KIND",
           "TRAIN_METRICS", "atomic_write_json", "environment_summary", "expand_paths", "finite", "key_of",
           "load", "load_many", "make_document", "measurement", "measurements_of", "preflight_out_dir",
           "result_name", "validate", "write_result"]
