"""The RNN encoder–decoder with additive attention (Bahdanau et al. 2015): the model the
Transformer replaced, as a translation baseline on the same task, data and decoding.

Encoder: a bidirectional GRU (or LSTM) over the source embeddings; each position's
state is the concatenation of the forward and backward states, (B, S, 2 * He).

Decoder, one target position t at a time (it cannot be run in parallel over t: the
attention at step t needs the state of step t - 1 — the sequential bottleneck the
Transformer removed):

    c_t  = attention(s_{t-1}, encoder states)                (additive, ``nn.additive_attention``)
    s_t  = GRU([E y_{t-1}; c_t], s_{t-1})
    o_t  = maxout(W_o [s_t; c_t; E y_{t-1}])                 ("deep output", appendix A.2.2)
    p(y_t) = softmax(E o_t)                                  (output tied to the target embeddings)

The first decoder state is ``tanh(W_s h_1^backward)`` (the backward encoder state of the
first source token, Bahdanau's initialisation). Beyond the paper we tie the output
projection to the (shared, joint-vocabulary) embeddings, as the Transformer preset does,
and apply dropout to the embeddings and the deep output (Multi30k is small).

The model follows ``models.seq2seq.Seq2Seq``'s interface — ``encode``, ``decode`` (with
``return_attentions`` giving the alignment as one layer of one head), ``forward``,
``make_step`` and ``new_cache`` for ``torchformer.generate`` — so the translation task's
loss, greedy decoding, beam search, BLEU and the alignment view use it unchanged.

Shapes: B sentences, S source positions, T target positions, E embedding size,
He encoder state size per direction, H decoder state size, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from torchformer.models.outputs import ModelOutput
from torchformer.models.seq2seq import sequence_loss
from torchformer.nn.additive_attention import AdditiveAttention
from torchformer.nn.linear import Linear


@dataclass
class RNNSeq2SeqConfig:
    """Sizes of the RNN encoder–decoder.

    ``max_len`` bounds source and output lengths (the recurrent model itself has no
    position table; translation uses it to cap outputs and truncate sources, as for the
    Transformer).
    """

    vocab_size: int = 8000  # target vocabulary (the joint one when share_embeddings)
    src_vocab_size: int | None = None  # None: same as vocab_size
    cell: Literal["gru", "lstm"] = "gru"
    embed_dim: int = 256  # E
    encoder_hidden: int = 384  # He, per direction
    encoder_layers: int = 1
    bidirectional: bool = True
    decoder_hidden: int = 512  # H
    attention_dim: int = 512  # A
    maxout_pieces: int = 2  # deep output: max over this many linear pieces (1: plain linear)
    dropout: float = 0.2  # embeddings, between encoder layers, deep output
    share_embeddings: bool = True  # source and target use one table (joint vocabulary)
    max_len: int = 100
    pad_id: int = 0
    decoder_start_id: int = 1
    eos_id: int = 2

    def __post_init__(self) -> None:
        if self.cell not in ("gru", "lstm"):
            raise ValueError(f"cell must be 'gru' or 'lstm', got {self.cell!r}")
        for name in ("embed_dim", "encoder_hidden", "encoder_layers", "decoder_hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.maxout_pieces < 1:
            raise ValueError(f"maxout_pieces must be >= 1, got {self.maxout_pieces}")
        if self.share_embeddings and self.src_vocab_size not in (None, self.vocab_size):
            raise ValueError(
                f"share_embeddings needs one joint vocabulary, but src_vocab_size="
                f"{self.src_vocab_size} != vocab_size={self.vocab_size}"
            )

    @property
    def d_model(self) -> int:
        """The decoder state size (what the Noam schedule scales by)."""
        return self.decoder_hidden

    def estimate_parameters(self) -> int:
        """The weight matrices' parameters (biases left out): what a checkpoint loader
        checks against its size limit before building the model."""
        E, He, H, A, C = (
            self.embed_dim,
            self.encoder_hidden,
            self.decoder_hidden,
            self.attention_dim,
            self.context_dim,
        )
        gates = 3 if self.cell == "gru" else 4
        directions = 2 if self.bidirectional else 1
        source_table = 0 if self.share_embeddings else (self.src_vocab_size or self.vocab_size)
        embeddings = (self.vocab_size + source_table) * E
        first = gates * He * (E + He) * directions
        rest = gates * He * (C + He) * directions * (self.encoder_layers - 1)
        bridge = He * H * (2 if self.cell == "lstm" else 1)  # s_0 (and the LSTM's c_0)
        decoder = gates * H * (E + C + H) + bridge
        attention = A * (H + C + 1)
        deep = (H + C + E) * E * self.maxout_pieces
        return embeddings + first + rest + decoder + attention + deep

    @property
    def context_dim(self) -> int:
        """Size of an encoder state: He, times 2 when bidirectional."""
        return self.encoder_hidden * (2 if self.bidirectional else 1)


PRESETS: dict[str, RNNSeq2SeqConfig] = {
    # Bahdanau's RNNsearch shape at Multi30k size: a bidirectional GRU encoder (384 per
    # direction), a 512-wide GRU decoder, 512 attention units, 256-wide embeddings shared by
    # both languages and the output. ~7.3M parameters with the 8k joint vocabulary, like
    # transformer-small-cpu's 7.6M: the two are compared at a similar size.
    "rnn-small-cpu": RNNSeq2SeqConfig(),
    "rnn-lstm-small-cpu": RNNSeq2SeqConfig(cell="lstm"),
    "rnn-tiny": RNNSeq2SeqConfig(
        vocab_size=1000, embed_dim=16, encoder_hidden=16, decoder_hidden=24, attention_dim=16
    ),
}


def rnn_preset(name: str, **overrides) -> RNNSeq2SeqConfig:
    """An ``RNNSeq2SeqConfig`` from a named preset, with fields overridden."""
    if name not in PRESETS:
        raise ValueError(f"unknown RNN preset {name!r}; expected one of {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)


class RecurrentState:
    """The decoder's state during generation: ``make_step``'s cache.

    Holds the decoder hidden state (N, H) (and the LSTM cell state) after the tokens fed
    so far; ``select`` reorders rows after a beam-search step, like ``KVCache.select``.
    """

    def __init__(self) -> None:
        self.hidden: Tensor | None = None  # (N, H)
        self.cell: Tensor | None = None  # (N, H), LSTM only
        self.length = 0

    @property
    def seq_len(self) -> int:
        """Target tokens consumed so far."""
        return self.length

    def select(self, index: Tensor) -> None:
        """Keep/reorder the rows ``index`` (N',)."""
        if self.hidden is not None:
            self.hidden = self.hidden.index_select(0, index)
        if self.cell is not None:
            self.cell = self.cell.index_select(0, index)


class RNNSeq2Seq(nn.Module):
    """Bidirectional-RNN encoder, attentive RNN decoder, tied output (see the module docstring).

    Masks are (B, L) tensors with 1 for real tokens and 0 for padding; None means nothing
    is padded.
    """

    def __init__(self, config: RNNSeq2SeqConfig) -> None:
        super().__init__()
        self.config = c = config
        rnn = nn.GRU if c.cell == "gru" else nn.LSTM
        cell = nn.GRUCell if c.cell == "gru" else nn.LSTMCell
        self.src_embed = nn.Embedding(c.src_vocab_size or c.vocab_size, c.embed_dim)
        self.tgt_embed = None if c.share_embeddings else nn.Embedding(c.vocab_size, c.embed_dim)
        self.dropout = nn.Dropout(c.dropout)
        self.encoder = rnn(
            c.embed_dim,
            c.encoder_hidden,
            num_layers=c.encoder_layers,
            bidirectional=c.bidirectional,
            batch_first=True,
            dropout=c.dropout if c.encoder_layers > 1 else 0.0,
        )
        states = 2 if c.cell == "lstm" else 1
        self.bridge = Linear(c.encoder_hidden, c.decoder_hidden * states)  # W_s
        self.attention = AdditiveAttention(c.decoder_hidden, c.context_dim, c.attention_dim)
        self.decoder_cell = cell(c.embed_dim + c.context_dim, c.decoder_hidden)
        self.deep_output = Linear(
            c.decoder_hidden + c.context_dim + c.embed_dim, c.embed_dim * c.maxout_pieces
        )
        init_weights(self)

    @property
    def target_embeddings(self) -> nn.Embedding:
        """The target token table (the source one when ``share_embeddings``)."""
        return self.src_embed if self.tgt_embed is None else self.tgt_embed

    def new_cache(self) -> RecurrentState:
        """An empty decoder state for ``make_step``."""
        return RecurrentState()

    def encode(
        self, src_ids: Tensor, *, src_mask: Tensor | None = None, return_attentions: bool = False
    ) -> ModelOutput:
        """Encode source ids (B, S).

        Returns:
            ModelOutput with last_hidden_state (B, S, C), C = ``config.context_dim``; padded
            positions are zero. An RNN has no attention maps: ``attentions`` is None.
        """
        _check_length(src_ids.size(1), self.config.max_len, "source")
        x = self.dropout(self.src_embed(src_ids))  # (B, S, E)
        if src_mask is None:
            states, _ = self.encoder(x)  # (B, S, C)
        else:
            lengths = src_mask.sum(-1).clamp(min=1).cpu()  # (B,)
            packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            out, _ = self.encoder(packed)
            states, _ = pad_packed_sequence(out, batch_first=True, total_length=src_ids.size(1))
        return ModelOutput(last_hidden_state=states)

    def _initial_state(self, context: Tensor, src_mask: Tensor | None) -> RecurrentState:
        """``s_0 = tanh(W_s h)``: h the backward state of the first source token (the
        forward state of the last one when the encoder is unidirectional)."""
        c = self.config
        if c.bidirectional:
            h = context[:, 0, c.encoder_hidden :]  # (B, He)
        else:
            last = (
                torch.full((context.size(0),), context.size(1) - 1, device=context.device)
                if src_mask is None
                else src_mask.sum(-1).clamp(min=1) - 1
            )  # (B,)
            h = context[torch.arange(context.size(0), device=context.device), last]  # (B, He)
        init = self.bridge(h)  # (B, H * states)
        state = RecurrentState()
        if c.cell == "lstm":
            hidden, cell = init.chunk(2, dim=-1)
            state.hidden, state.cell = torch.tanh(hidden), cell  # (B, H) each
        else:
            state.hidden = torch.tanh(init)  # (B, H)
        return state

    def _run_decoder(
        self,
        tgt_ids: Tensor,
        context: Tensor,
        keys: Tensor,
        src_mask: Tensor | None,
        state: RecurrentState,
        *,
        return_attentions: bool,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Feed tgt_ids (N, T) one step at a time from ``state`` (updated in place).

        Returns:
            (decoder states (N, T, H), deep outputs (N, T, E), alignment (N, T, S) or None).
        """
        embedded = self.dropout(self.target_embeddings(tgt_ids))  # (N, T, E)
        states, contexts, weights = [], [], []
        hidden, cell = state.hidden, state.cell
        for t in range(tgt_ids.size(1)):
            ctx, alpha = self.attention(hidden, keys, context, src_mask)  # (N, C), (N, S)
            step_in = torch.cat([embedded[:, t], ctx], dim=-1)  # (N, E + C)
            if cell is None:
                hidden = self.decoder_cell(step_in, hidden)  # (N, H)
            else:
                hidden, cell = self.decoder_cell(step_in, (hidden, cell))  # (N, H) each
            states.append(hidden)
            contexts.append(ctx)
            if return_attentions:
                weights.append(alpha)
        state.hidden, state.cell = hidden, cell
        state.length += tgt_ids.size(1)
        s, ctxs = torch.stack(states, 1), torch.stack(contexts, 1)  # (N, T, H), (N, T, C)
        pre = self.deep_output(torch.cat([s, ctxs, embedded], dim=-1))  # (N, T, E * pieces)
        k = self.config.maxout_pieces
        out = pre.view(*pre.shape[:-1], -1, k).amax(-1) if k > 1 else pre  # (N, T, E)
        alignment = torch.stack(weights, 1) if return_attentions else None  # (N, T, S)
        return s, self.dropout(out), alignment

    def lm_logits(self, output: Tensor) -> Tensor:
        """Deep outputs (N, T, E) -> logits (N, T, V), through the tied embedding matrix."""
        return nn.functional.linear(output, self.target_embeddings.weight)

    def decode(
        self,
        tgt_ids: Tensor,
        encoder_out: Tensor | ModelOutput,
        *,
        src_mask: Tensor | None = None,
        tgt_mask: Tensor | None = None,
        cache: RecurrentState | None = None,
        return_attentions: bool = False,
    ) -> ModelOutput:
        """Run target ids (B, T) against the encoder output (B, S, C), one step at a time.

        Args:
            tgt_ids: (B, T) decoder inputs; with a cache, only the tokens not yet fed.
            encoder_out: ``encode``'s output or its last_hidden_state.
            src_mask: (B, S) source padding mask.
            tgt_mask: unused (a recurrent decoder does not look ahead, so padding at the
                end of a target changes nothing before it); accepted for the interface.
            cache: the decoder state, updated in place (empty: start from ``s_0``).
            return_attentions: also return the alignment as ``cross_attentions``: one layer
                of one head, (B, 1, T, S).

        Returns:
            ModelOutput with logits (B, T, V), last_hidden_state (B, T, H), cache.
        """
        del tgt_mask
        context = _context(encoder_out)  # (B, S, C)
        state = cache if cache is not None else RecurrentState()
        if state.hidden is None:
            init = self._initial_state(context, src_mask)
            state.hidden, state.cell = init.hidden, init.cell
        _check_length(state.length + tgt_ids.size(1), self.config.max_len, "target")
        keys = self.attention.project_keys(context)  # (B, S, A)
        hidden, out, alignment = self._run_decoder(
            tgt_ids, context, keys, src_mask, state, return_attentions=return_attentions
        )
        return ModelOutput(
            last_hidden_state=hidden,
            logits=self.lm_logits(out),
            cross_attentions=(alignment.unsqueeze(1),) if alignment is not None else None,
            cache=cache,
        )

    def forward(
        self,
        src_ids: Tensor,
        tgt_in_ids: Tensor,
        *,
        src_mask: Tensor | None = None,
        tgt_mask: Tensor | None = None,
        labels: Tensor | None = None,
        label_smoothing: float = 0.0,
        return_attentions: bool = False,
    ) -> ModelOutput:
        """Teacher forcing: logits (B, T, V) for every target position (computed in order).

        ``labels`` (B, T): the tokens to predict; ``pad_id`` or -100 are ignored by the loss.
        """
        enc = self.encode(src_ids, src_mask=src_mask)
        out = self.decode(
            tgt_in_ids,
            enc.last_hidden_state,
            src_mask=src_mask,
            tgt_mask=tgt_mask,
            return_attentions=return_attentions,
        )
        out.encoder_last_hidden_state = enc.last_hidden_state
        if labels is not None:
            out.loss = sequence_loss(
                out.logits, labels, pad_id=self.config.pad_id, label_smoothing=label_smoothing
            )
        return out

    def make_step(self, encoder_out: Tensor | ModelOutput, src_mask: Tensor | None = None):
        """A generation step ``step(last_ids (N, t), cache) -> logits (N, V)`` over this source.

        As ``Seq2Seq.make_step``: N = k * B rows, rows k*b .. k*b+k-1 decoding source b; the
        encoder states, their projected keys and the mask are repeated k times once.
        """
        context = _context(encoder_out)  # (B, S, C)
        B = context.size(0)
        expanded: dict[int, tuple[Tensor, Tensor, Tensor | None]] = {}

        def rows_of(n: int) -> tuple[Tensor, Tensor, Tensor | None]:
            if n not in expanded:
                if n % B:
                    raise ValueError(f"step got {n} rows; expected a multiple of the {B} sources")
                k = n // B
                ctx = context.repeat_interleave(k, dim=0) if k > 1 else context  # (N, S, C)
                mask = None if src_mask is None else src_mask.repeat_interleave(k, dim=0)
                expanded[n] = (ctx, self.attention.project_keys(ctx), mask)
            return expanded[n]

        def step(last_ids: Tensor, cache: RecurrentState) -> Tensor:
            ctx, keys, mask = rows_of(last_ids.size(0))
            if cache.hidden is None:
                init = self._initial_state(ctx, mask)
                cache.hidden, cache.cell = init.hidden, init.cell
            _check_length(cache.length + last_ids.size(1), self.config.max_len, "target")
            _, out, _ = self._run_decoder(last_ids, ctx, keys, mask, cache, return_attentions=False)
            return self.lm_logits(out[:, -1])  # (N, V)

        return step


def _context(encoder_out: Tensor | ModelOutput) -> Tensor:
    return encoder_out.last_hidden_state if isinstance(encoder_out, ModelOutput) else encoder_out


def _check_length(length: int, max_len: int, side: str) -> None:
    if length > max_len:
        raise ValueError(f"{side} length {length} exceeds the model's max_len {max_len}")


def init_weights(model: RNNSeq2Seq) -> None:
    """Orthogonal recurrent matrices (Saxe et al. 2014), Xavier-uniform input and feed-forward
    matrices, zero biases, embeddings N(0, E^-0.5) (they are also the output matrix)."""
    for name, param in model.named_parameters():
        if "embed" in name:
            nn.init.normal_(param, std=model.config.embed_dim**-0.5)
        elif "weight_hh" in name:
            for chunk in param.data.chunk(param.size(0) // param.size(1), dim=0):
                nn.init.orthogonal_(chunk)
        elif param.dim() >= 2:
            nn.init.xavier_uniform_(param)
        else:
            nn.init.zeros_(param)
