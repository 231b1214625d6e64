"""torchformer.export."""
