"""One exception type for bad input, so that the CLI prints one clear line instead of a traceback."""


class PDSLError(Exception):
    """Bad input or state a user can fix. The message names the file, image id or field."""


class DataError(PDSLError):
    """A dataset, manifest, proposal file or image is missing, unreadable or malformed."""


class CacheError(PDSLError):
    """A cue cache is missing, incomplete, stale, from another dataset or another format version."""


class ConfigError(PDSLError):
    """A config key or value is invalid."""
