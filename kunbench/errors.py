"""One exception type for bad user input, so the CLI can print it as a single line."""


class KunbenchError(Exception):
    """A problem with the user's input (config, flag, dataset) described in one line."""
