"""fdlite: embedded quantized LLM inference (FastDeploy's methods) on NumPy and CuPy."""
from .errors import (CheckpointError, ConfigError, FdliteError, InputError, ModelClosedError, TokenizerError,
                     UnsupportedArchitectureError)
from .model import Model
from .sampling_params import CompletionOutput, Logprob, RequestOutput, SamplingParams, StreamPiece

__version__ = "0.1.0"
__all__ = ["Model", "SamplingParams", "RequestOutput", "CompletionOutput", "Logprob", "StreamPiece",
           "FdliteError", "CheckpointError", "ConfigError", "UnsupportedArchitectureError", "TokenizerError",
           "InputError", "ModelClosedError"]
