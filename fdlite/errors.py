"""Typed errors. Each message names the file, key, value or limit at fault."""


class FdliteError(Exception):
    """Base class of every error fdlite raises on purpose."""


class CheckpointError(FdliteError, ValueError):
    """A checkpoint file is missing, truncated, corrupt or inconsistent with its config."""


class ConfigError(FdliteError, ValueError):
    """config.json (or GGUF metadata) is unreadable or describes something fdlite cannot run."""


class UnsupportedArchitectureError(ConfigError):
    """The checkpoint's architecture has no module under fdlite/models/."""


class TokenizerError(FdliteError, ValueError):
    """Tokenizer files are missing or unusable, or text was given to a model without a tokenizer."""


class InputError(FdliteError, ValueError):
    """A prompt, token id or request the caller gave cannot be run (quotes the value and the limit)."""


class ModelClosedError(FdliteError, RuntimeError):
    """The model was closed; load it again to use it."""
