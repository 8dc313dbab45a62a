"""ONNX export, Triton model repository, local Triton launcher and gRPC client (later issues)."""
