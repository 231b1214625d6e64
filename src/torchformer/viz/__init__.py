"""torchformer.viz."""
