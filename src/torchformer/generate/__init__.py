"""torchformer.generate."""
