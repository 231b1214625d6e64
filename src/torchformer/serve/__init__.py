"""torchformer.serve."""
