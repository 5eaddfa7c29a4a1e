"""The one base class for expected failures: the CLI prints their message, without a traceback."""


class DicomflowError(Exception):
    """An expected failure; the message says what is wrong and how to fix it."""
