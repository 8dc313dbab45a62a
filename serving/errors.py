"""The serving errors, in a module of their own so the command line can catch them without importing torch."""


class ExportError(RuntimeError):
    """The model could not be exported, or its ONNX copy does not predict what it does."""


class TritonError(RuntimeError):
    """The local Triton server could not be set up, started or stopped."""


class ServingError(RuntimeError):
    """The server cannot answer: down, model not ready, a mismatched model, or a failed request."""


class RowError(ValueError):
    """A request row is malformed: a missing or extra field, or a value of the wrong type."""


SERVING_ERRORS = (ExportError, TritonError, ServingError)
