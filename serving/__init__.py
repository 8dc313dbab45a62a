"""Serving: ONNX export, Triton model repositories, the local Triton server and the gRPC CTR client."""
