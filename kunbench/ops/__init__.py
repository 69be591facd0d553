"""Torch-only index plans shared by the models and the kernels: jagged <-> padded views
(`jagged`) and symmetric-window bands (`banded`). Nothing here imports pyarrow or numpy, so
importing the kernels never pulls in the loader's dependencies."""
