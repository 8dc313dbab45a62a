"""The served model's interface, shared by the exporter, the repository writer and the client (no torch here)."""

MODEL_PREFIX = "nasrec_"  # the default model name is this and the schema's name: nasrec_criteo, nasrec_avazu
IDS_SUFFIX = "_ids"  # the model taking model-ready ids beside each model taking raw events: nasrec_criteo_ids
MODEL_FILE = "model.onnx"
DENSE_INPUT = "dense"  # float32 (B, n_dense), transformed dense features
SPARSE_INPUT = "sparse"  # int64 (B, n_sparse), category ids (0: missing or unseen)
OUTPUT = "probability"  # float32 (B, 1), the click probability


def default_model_name(schema_name: str) -> str:
    """A model per schema: a model trained on other fields never replaces one clients send other fields to."""
    return MODEL_PREFIX + schema_name
