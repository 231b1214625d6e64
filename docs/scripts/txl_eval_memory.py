"""Validation bits per character of a trained Transformer-XL run under other evaluation
memories (docs/results.md, issue 13, acceptance 5).

    TORCHFORMER_DATA=../shared/data .venv/bin/python docs/scripts/txl_eval_memory.py \\
        runs/shakespeare-char-txl-12ep 0 64 128 256 512
"""

import math
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from torchformer.config import load_config
from torchformer.models.transformer_xl import segment_losses
from torchformer.tasks.language_model import LanguageModelConfig, LanguageModelTask
from torchformer.tasks.lm_generator import LanguageModel


def main(run: str, memories: list[int]) -> None:
    torch.set_num_threads(1)
    task = LanguageModelTask(load_config(LanguageModelConfig, f"{run}/config.yaml"))
    task.prepare(Path(tempfile.mkdtemp()), resume=False, main=True)  # the run's val streams
    model = LanguageModel.from_dir(f"{run}/best").model.eval()
    tokens, length = task.files["val"].tokens, task.val_stream_len
    rows = np.stack(
        [np.asarray(tokens[s : s + length + 1], dtype=np.int64) for s in task.val_starts]
    )
    rows = torch.from_numpy(rows)
    for memory in memories:
        with torch.inference_mode():
            total = segment_losses(model, rows, memory_len=memory).sum().item()
        loss = total / (rows.size(0) * length)
        print(f"{run} eval memory {memory}: loss {loss:.4f} bpc {loss / math.log(2):.4f}")


if __name__ == "__main__":
    main(sys.argv[1], [int(m) for m in sys.argv[2:]])
