"""The served model's interface, shared by the exporter, the repository writer and the client (no torch here)."""

DEFAULT_MODEL = "nasrec_ctr"  # the model name in a Triton repository unless told otherwise
MODEL_FILE = "model.onnx"
DENSE_INPUT = "dense"  # float32 (B, n_dense), transformed dense features
SPARSE_INPUT = "sparse"  # int64 (B, n_sparse), category ids (0: missing or unseen)
OUTPUT = "probability"  # float32 (B, 1), the click probability
