"""The one base class for errors a user can fix (bad config, bad data, an unsupported request): the CLI prints
their one-line message and exits 2, with no traceback. Anything else is a bug and keeps its traceback."""


class UserError(Exception):
    """Bad input or an unsupported request; the message is one line that says what and where."""
