"""The RNN encoder–decoder (``models.rnn_seq2seq``) in a model directory of our own.

Hugging Face has no RNN translation architecture, so there is no layout to match: the
model is saved as our own config (``model_type: "torchformer-rnn"``, the
``RNNSeq2SeqConfig`` fields) and our parameter names in ``model.safetensors``, as
``checkpoints/t5.py`` saves the original Transformer; ``load_pretrained`` reads it back
(``task="seq2seq_lm"``), so ``torchformer.load`` and the translator load it like any
translation model.
"""

from __future__ import annotations

from torchformer.checkpoints.own_layout import own_layout_family
from torchformer.models.rnn_seq2seq import RNNSeq2Seq, RNNSeq2SeqConfig

MODEL_TYPE = "torchformer-rnn"

FAMILY = own_layout_family(MODEL_TYPE, RNNSeq2SeqConfig, "seq2seq_lm", RNNSeq2Seq)
