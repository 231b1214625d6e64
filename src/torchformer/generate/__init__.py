"""Text generation: greedy, sampling and beam search over any decoder (``generate``)."""

from torchformer.generate.generation import GenerationConfig, generate, stream

__all__ = ["GenerationConfig", "generate", "stream"]
