"""NASRec in pure PyTorch: search spaces, architectures, operators, supernet, NASRecNet, sampling."""

from model.arch import Architecture, Block
from model.network import InputSchema, NASRecNet
from model.space import SPACES, SearchSpace, get_space
from model.supernet import Supernet

__all__ = ["SPACES", "Architecture", "Block", "InputSchema", "NASRecNet", "SearchSpace", "Supernet", "get_space"]
