"""kunbench: synthetic CTR data and benchmarks for ranking architectures and their kernels."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kunbench")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
