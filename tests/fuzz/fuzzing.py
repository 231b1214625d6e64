"""Helpers shared by the fuzz and fault-injection tests (issue 18): the stats file, the
Hypothesis settings, and a tiny untrained language model for ``/generate``.

Imported by name from the test modules of this folder (test folders are not packages).
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings

# Every fuzz test: the same examples on every run (CI reproduces a failure) and no
# example database written into the work tree.
FUZZ = settings(
    database=None,
    derandomize=True,
    deadline=None,  # the machine is shared: timing is not what these tests check
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=False,
)

STATS_ENV = "TORCHFORMER_FUZZ_STATS"


def record_stats(**values: Any) -> dict[str, Any]:
    """Merge ``values`` into the JSON file named by ``$TORCHFORMER_FUZZ_STATS`` (if set).

    Test files run in separate processes add their keys to the same file: it is read,
    updated and rewritten under an exclusive lock. Returns the merged stats.
    """
    print(f"fuzz stats: {json.dumps(values)}")  # shown with -s / in the captured output
    target = os.environ.get(STATS_ENV)
    if not target:
        return dict(values)
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            stats = json.loads(path.read_text()) if path.is_file() else {}
        except ValueError:
            stats = {}
        stats.update(values)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)
    return stats


def tiny_language_model():
    """A GPT-2-style decoder (d_model 32, 2 layers, context 64) with a byte-level BPE
    tokenizer, untrained: every prompt tokenizes, and generation is real but cheap."""
    import deploy_fixtures
    import torch

    from torchformer.models.decoder import DecoderForCausalLM, preset
    from torchformer.tasks.lm_generator import LanguageModel, LMSettings
    from torchformer.text.lm_tokenizers import train_byte_level_bpe

    texts = [text for text, _ in deploy_fixtures.toy_records(64)]
    tokenizer = train_byte_level_bpe(texts, vocab_size=300, min_frequency=1)
    torch.manual_seed(0)
    eos = tokenizer.eos_id
    config = preset(
        "tiny", vocab_size=tokenizer.vocab_size, max_len=64, bos_id=eos, eos_id=eos,
        dropout=0.0, attn_dropout=0.0, embd_dropout=0.0,
    )  # fmt: skip
    settings_ = LMSettings(max_new_tokens=8, block_size=64, top_k=20)
    return LanguageModel(DecoderForCausalLM(config), tokenizer, settings_)
