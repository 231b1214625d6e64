"""torchformer.train: the pieces a training loop is built from.

Plain functions and small objects, each in its own module; the loop itself lives in
the task module that uses them (``torchformer.tasks``).
"""

from torchformer.train.accumulation import (
    is_accumulation_boundary,
    optimizer_step,
    sync_gradients,
)
from torchformer.train.checkpoint import (
    Checkpoint,
    CheckpointError,
    CheckpointManager,
    CheckpointWriteError,
    atomic_write_bytes,
    atomic_write_text,
    load_checkpoint,
    restore_training_state,
    save_checkpoint,
    training_state,
    unwrap_model,
)
from torchformer.train.early_stopping import EarlyStopping
from torchformer.train.guards import NonFiniteLossError, check_finite
from torchformer.train.logging import (
    MetricsLogger,
    ProgressPostfix,
    fingerprint_records,
    progress_bar,
    read_metrics,
    write_manifest,
)
from torchformer.train.optim import build_optimizer, param_groups
from torchformer.train.run_dir import RunDirError, claim_run_dir, next_free_run_dir
from torchformer.train.schedules import SCHEDULES, Scheduler, build_scheduler, lr_multiplier
from torchformer.train.seed import capture_rng_state, restore_rng_state, seed_everything

__all__ = [
    "SCHEDULES",
    "Checkpoint",
    "CheckpointError",
    "CheckpointManager",
    "CheckpointWriteError",
    "EarlyStopping",
    "MetricsLogger",
    "NonFiniteLossError",
    "ProgressPostfix",
    "RunDirError",
    "Scheduler",
    "atomic_write_bytes",
    "atomic_write_text",
    "build_optimizer",
    "build_scheduler",
    "capture_rng_state",
    "check_finite",
    "claim_run_dir",
    "fingerprint_records",
    "is_accumulation_boundary",
    "load_checkpoint",
    "lr_multiplier",
    "next_free_run_dir",
    "optimizer_step",
    "param_groups",
    "progress_bar",
    "read_metrics",
    "restore_rng_state",
    "restore_training_state",
    "save_checkpoint",
    "seed_everything",
    "sync_gradients",
    "training_state",
    "unwrap_model",
    "write_manifest",
]
