"""The `kunbench` command line. Each command parses flags, calls library code, and turns
KunbenchError into a one-line message with exit status 2."""

from __future__ import annotations

import click
from rich.table import Table

import kunbench
from kunbench.cli_common import console, err_console, friendly_errors  # noqa: F401 (re-exported)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(kunbench.__version__, prog_name="kunbench")
def main() -> None:
    """kunbench: synthetic CTR data and benchmarks for ranking architectures and kernels."""


@main.command()
@friendly_errors
def info() -> None:
    """Print the environment: Python, torch, triton, CPU, and GPUs through NVML."""
    from kunbench.environment import environment_stamp

    stamp = environment_stamp()
    table = Table(title="kunbench environment", show_header=False)
    for key in ("kunbench", "python", "torch", "triton", "numpy", "pyarrow", "cuda", "git_sha",
                "hostname", "platform", "cpu", "cpu_count", "host_malloc"):
        table.add_row(key, str(stamp.get(key)))
    gpu = stamp["gpu"]
    if gpu.get("available"):
        table.add_row("driver", gpu["driver"])
        for dev in gpu["devices"]:
            table.add_row(f"gpu {dev['index']}", f"{dev['name']} ({dev['memory_total_gib']} GiB)")
    else:
        table.add_row("gpu", gpu.get("reason", "no GPU"))
    console.print(table)


def _register_subcommands() -> None:
    from kunbench.cli_data import generate, inspect_cmd, probe_cmd
    from kunbench.cli_import import export_cmd, import_cmd
    from kunbench.cli_suites import compare_cmd, report_cmd, run_cmd, selfcheck_cmd
    from kunbench.cli_train import list_cmd, train_cmd

    main.add_command(generate)
    main.add_command(inspect_cmd)
    main.add_command(probe_cmd)
    main.add_command(import_cmd)
    main.add_command(export_cmd)
    main.add_command(train_cmd)
    main.add_command(list_cmd)
    main.add_command(run_cmd)
    main.add_command(compare_cmd)
    main.add_command(report_cmd)
    main.add_command(selfcheck_cmd)


_register_subcommands()
