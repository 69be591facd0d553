"""One exception type for bad user input, so the CLI can print it as a single line."""


class KunbenchError(Exception):
    """A problem with the user's input (config, flag, dataset) described in one line."""


def read_document(path, parse, what: str):
    """`parse` of the text at `path`; a missing, unreadable or malformed file is one line naming
    it and what it should have been (`what`, e.g. "result JSON")."""
    from pathlib import Path

    path = Path(path)
    try:
        return parse(path.read_text())
    except FileNotFoundError:
        raise KunbenchError(f"{path}: no such {what}") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # JSON and TOML decode errors are ValueErrors
        raise KunbenchError(f"{path}: not a readable {what} ({exc})") from None
