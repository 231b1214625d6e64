"""torchformer.tasks."""
