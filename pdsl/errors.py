"""One exception type for bad input, so that the CLI prints one clear line instead of a traceback."""


class PDSLError(Exception):
    """Bad input or state a user can fix. The message names the file, image id or field."""


class DataError(PDSLError):
    """A dataset, manifest, proposal file or image is missing, unreadable or malformed."""


class CacheError(PDSLError):
    """A cue cache is missing, incomplete, stale, from another dataset or another format version."""


class ConfigError(PDSLError):
    """A config key or value is invalid."""


def user_message(e: BaseException) -> str:
    """The message of a PDSLError as the CLI prints it: one line. An error raised in a torch
    DataLoader worker comes back re-raised with the worker's traceback in its message
    ("Caught CacheError in DataLoader worker process 0. Original Traceback ..."); this keeps
    only the original message."""
    msg = str(e)
    if "Original Traceback" in msg:
        last = msg.rstrip().splitlines()[-1]
        head, sep, rest = last.partition(": ")
        msg = rest if sep and head.rsplit(".", 1)[-1] == type(e).__name__ else last
    return msg
