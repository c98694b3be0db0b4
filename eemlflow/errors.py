"""The one exception type eemlflow raises for problems a user can fix."""


class EemlflowError(Exception):
    """A problem with the user's input or environment, with a message that says what to do.

    Command-line entry points print it as one line and exit non-zero, without a traceback.
    """
