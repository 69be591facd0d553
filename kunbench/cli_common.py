"""What every CLI module shares: the consoles and the one-line error wrapper."""

from __future__ import annotations

import functools
import sys

from rich.console import Console
from rich.markup import escape

from kunbench.errors import KunbenchError

console = Console(stderr=False)
err_console = Console(stderr=True)


def friendly_errors(fn):
    """KunbenchError -> one red line on stderr (never wrapped, never a traceback) and exit 2."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except KunbenchError as exc:
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            sys.exit(2)
    return wrapper
