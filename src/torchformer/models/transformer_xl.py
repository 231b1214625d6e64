"""Transformer-XL: a decoder language model with segment-level recurrence.

Dai et al. 2019 ("Transformer-XL: Attentive Language Models Beyond a Fixed-Length
Context") train on a long text cut into consecutive segments of T tokens. Each layer
keeps its inputs of the previous segment(s) — M positions, gradient-stopped — as a
*memory*, and the next segment's queries attend to the memory and to their own segment.
Information then flows across segment boundaries: after L layers a token can depend on
up to L·M earlier tokens, where a fixed-window model of the same segment length sees T.
Absolute positions would collide between segments, so positions are relative: every
score gets a term in the sinusoid of the query–key distance
(``nn.relative_position.RelativeMultiHeadAttention``).

Built from the same blocks as the GPT-2 decoder (``FeedForward``, ``LayerNorm``, the
attention kernels of ``nn.attention``) with one deliberate difference from the paper:
layers are pre-norm, as GPT-2's, which trains without the paper's warm-up care (the
memory is then the residual stream entering a layer, normalised by that layer's norm
with the new positions). The softmax is a plain one, not adaptive.

``mem_len=0`` is the same model without memory: every segment is read on its own, the
baseline of the paper's comparison at equal segment length.

Shape legend: B batch, T new positions, M memory positions, S = M + T, D d_model,
H heads, V vocabulary, L layers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchformer.models.decoder import init_weights
from torchformer.models.outputs import ModelOutput
from torchformer.nn import FeedForward
from torchformer.nn.cache import SegmentMemory
from torchformer.nn.linear import Linear, linear
from torchformer.nn.positional import sinusoidal_table
from torchformer.nn.relative_position import RelativeMultiHeadAttention

# Positions are relative and the memory is a fixed window: no sequence length is too long.
UNBOUNDED = 2**31 - 1


@dataclass
class TransformerXLConfig:
    """Size and recurrence of a Transformer-XL language model.

    Attributes:
        segment_len: T, tokens per training segment.
        mem_len: M, positions of the previous segments each layer remembers in training
            and evaluation (0: no memory).
        eval_mem_len: memory for evaluation and generation when it should differ from
            ``mem_len`` (the paper evaluates with longer memories than it trains with;
            relative positions allow it). None: ``mem_len``.
    """

    vocab_size: int = 1000
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 512
    segment_len: int = 64
    mem_len: int = 64
    eval_mem_len: int | None = None
    dropout: float = 0.0  # residual dropout
    attn_dropout: float = 0.0  # on the attention probabilities
    embd_dropout: float = 0.0  # on the token embeddings
    activation: str = "gelu"
    norm_eps: float = 1e-5
    initializer_range: float = 0.02
    attn_impl: str = "sdpa"
    tie_embeddings: bool = True
    bos_id: int | None = None
    eos_id: int | list[int] | None = None
    pad_id: int | None = None

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "segment_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.mem_len < 0 or (self.eval_mem_len is not None and self.eval_mem_len < 0):
            raise ValueError(
                f"mem_len and eval_mem_len must be >= 0, got {self.mem_len}, {self.eval_mem_len}"
            )
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")

    @property
    def max_len(self) -> int:
        """No limit: positions are relative (generation keeps a window of memory)."""
        return UNBOUNDED

    @property
    def memory_for_eval(self) -> int:
        return self.mem_len if self.eval_mem_len is None else self.eval_mem_len


class TransformerXLLayer(nn.Module):
    """Pre-norm block: relative self-attention over [memory; x], then the FFN."""

    def __init__(self, config: TransformerXLConfig) -> None:
        super().__init__()
        d = config.d_model
        self.self_attn = RelativeMultiHeadAttention(
            d, config.n_heads, dropout=config.attn_dropout, attn_impl=config.attn_impl
        )
        self.ffn = FeedForward(d, config.d_ff, activation=config.activation, dropout=0.0)
        self.attn_norm = nn.LayerNorm(d, eps=config.norm_eps)
        self.ffn_norm = nn.LayerNorm(d, eps=config.norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: Tensor,
        memory: Tensor | None = None,
        *,
        distances: Tensor | None = None,
        return_attentions: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """x (B, T, D), memory (B, M, D) -> (B, T, D), probabilities (B, H, T, S) or None.

        ``distances``: the (S, D) sinusoids of distances 0..S−1, shared by the layers."""
        context = None if memory is None else self.attn_norm(memory)
        h, probs = self.self_attn(
            self.attn_norm(x),
            memory=context,
            distances=distances,
            return_attentions=return_attentions,
        )
        x = x + self.dropout(h)
        x = x + self.dropout(self.ffn(self.ffn_norm(x)))
        return x, probs


class TransformerXLForCausalLM(nn.Module):
    """Token embeddings, L relative-attention layers with memory, final norm, tied head."""

    def __init__(self, config: TransformerXLConfig) -> None:
        super().__init__()
        self.config = config
        self.token_embeddings = nn.Embedding(config.vocab_size, config.d_model)
        self.dropout = nn.Dropout(config.embd_dropout)
        self.layers = nn.ModuleList(TransformerXLLayer(config) for _ in range(config.n_layers))
        self.final_norm = nn.LayerNorm(config.d_model, eps=config.norm_eps)
        self.lm_head = None
        if not config.tie_embeddings:
            self.lm_head = Linear(config.d_model, config.vocab_size, bias=False)
        self.apply(lambda m: init_weights(m, config))  # GPT-2's: N(0, 0.02), unit norms
        residual_std = config.initializer_range / math.sqrt(2 * config.n_layers)
        for layer in self.layers:  # the projections into the residual stream (GPT-2 §2.3)
            nn.init.normal_(layer.self_attn.out_proj.weight, std=residual_std)
            nn.init.normal_(layer.ffn.down_proj.weight, std=residual_std)

    def new_memory(self, length: int | None = None) -> SegmentMemory:
        """An empty memory of ``length`` positions (default: the training ``mem_len``)."""
        return SegmentMemory(
            self.config.n_layers, self.config.mem_len if length is None else length
        )

    def lm_logits(self, hidden: Tensor) -> Tensor:
        """Hidden states (B, T, D) -> next-token logits (B, T, V)."""
        if self.lm_head is None:
            return linear(hidden, self.token_embeddings.weight)
        return self.lm_head(hidden)

    def forward(
        self,
        input_ids: Tensor,
        *,
        memory: SegmentMemory | None = None,
        labels: Tensor | None = None,
        return_attentions: bool = False,
        return_hidden_states: bool = False,
    ) -> ModelOutput:
        """Logits (B, T, V) of a segment; ``memory`` is read and then updated in place.

        Args:
            input_ids: (B, T) the segment's tokens.
            memory: the previous segments' layer inputs (``new_memory()``), or None.
            labels: (B, T): the loss scores position t against ``labels[:, t + 1]``
                (as ``DecoderForCausalLM``); -100 is ignored.

        Returns:
            ModelOutput with logits, last_hidden_state, ``cache`` = the memory.
        """
        x = self.dropout(self.token_embeddings(input_ids))  # (B, T, D)
        S = input_ids.size(1) + (0 if memory is None else memory.seq_len)
        distances = sinusoidal_table(S, x.size(-1)).to(x.device, x.dtype)  # once, every layer
        inputs, attentions, hidden = [], [], [x]
        for i, layer in enumerate(self.layers):
            inputs.append(x)
            past = None if memory is None else memory[i]  # (B, M, D) or None
            if past is not None and past.size(0) != x.size(0):
                raise ValueError(
                    f"the memory holds {past.size(0)} rows, the segment {x.size(0)}: "
                    "consecutive segments must keep the same rows"
                )
            x, probs = layer(x, past, distances=distances, return_attentions=return_attentions)
            attentions.append(probs)
            hidden.append(x)
        x = self.final_norm(x)
        hidden[-1] = x
        if memory is not None:
            memory.update(inputs)
        out = ModelOutput(
            last_hidden_state=x,
            logits=self.lm_logits(x),
            hidden_states=tuple(hidden) if return_hidden_states else None,
            attentions=tuple(attentions) if return_attentions else None,
            cache=memory,
        )
        if labels is not None:
            shifted = out.logits[:, :-1].flatten(0, 1)
            out.loss = F.cross_entropy(shifted, labels[:, 1:].flatten(), ignore_index=-100)
        return out

    def generation_memory(self) -> SegmentMemory:
        """The memory for generation: the longest distance a query saw in training
        (M + T − 1 positions back; with evaluation's memory if set)."""
        c = self.config
        return self.new_memory(c.memory_for_eval + c.segment_len - 1)

    def make_step(self) -> Callable[[Tensor, SegmentMemory], Tensor]:
        """A generation step ``step(ids (B, t), memory) -> logits (B, V)``: the prompt,
        then one token at a time, each attending to the memory of the tokens before it —
        the same contract as ``models.decoder.make_step`` with a KV cache."""

        def step(ids: Tensor, memory: SegmentMemory) -> Tensor:
            out = self(ids, memory=memory)
            return out.logits[:, -1]  # (B, V)

        return step


@torch.no_grad()
def segment_losses(
    model: TransformerXLForCausalLM, tokens: Tensor, *, memory_len: int | None = None
) -> Tensor:
    """Summed next-token loss of each row of ``tokens`` (B, N + 1), read in order in
    segments of ``segment_len`` with the memory carried across (evaluation's memory by
    default): every token after the first is predicted once. Returns (B,)."""
    c = model.config
    memory = model.new_memory(c.memory_for_eval if memory_len is None else memory_len)
    total = tokens.new_zeros(tokens.size(0), dtype=torch.float32)
    for start in range(0, tokens.size(1) - 1, c.segment_len):
        seg = tokens[:, start : start + c.segment_len + 1]  # (B, t + 1)
        logits = model(seg[:, :-1], memory=memory).logits.float()  # (B, t, V)
        total += F.cross_entropy(logits.transpose(1, 2), seg[:, 1:], reduction="none").sum(-1)
    return total
