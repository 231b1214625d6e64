"""Load and save our models in Hugging Face layout, with explicit key maps."""

from torchformer.checkpoints.hf import CheckpointError, LoadReport, resolve_model_dir
from torchformer.checkpoints.registry import load_pretrained, save_pretrained

__all__ = [
    "CheckpointError",
    "LoadReport",
    "load_pretrained",
    "resolve_model_dir",
    "save_pretrained",
]
