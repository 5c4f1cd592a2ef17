"""Prompt encoding on the SD path (Stable Diffusion 1.x/2.x and SDXL) for prompts with emphasis, `BREAK` or more
tokens than the text encoder's window, through the `compel` library.

`generation.protocol.prompt.parse_emphasis` reads the AUTOMATIC1111 syntax into `BREAK`-separated parts of weighted
fragments (`(red:1.3)`, `(red)` x1.1, `[red]` /1.1, `\\(` ...); compel's `EmbeddingsProvider` turns each part into
embeddings:

- every fragment is tokenized on its own, so no bracket, colon or weight reaches the text encoder;
- the tokens are laid out in windows of the encoder's length (77 on real models), each with its start and end token
  and padded, as many windows as the part needs; a full window ends after its last comma when that comma is among its
  last 20 tokens (A1111's `comma_padding_backtrack`), else at the window's end. Every window goes through the encoder
  on its own and the windows are concatenated along the token axis, as A1111 does: the UNet's cross-attention reads
  any number of tokens, so nothing of a long prompt is cut;
- the weights are applied compel's way: a weighted token's embedding z is moved along its difference from the empty
  prompt's embedding e at that place, to `e + (z - e) * w`; below 1 the whole conditioning is in addition blended
  towards the one whose weighted tokens are masked out of the encoder's attention, by tan((1 - w) * pi / 2) to 1
  (halfway at 0.5, all the way at 0). A1111 multiplies the embeddings by the weights and restores their mean
  instead; the direction is the same, the strength per step of weight not quite.

The parts of a `BREAK` are encoded one after the other and concatenated, so each starts a window of its own.

SDXL: both text encoders (their penultimate hidden states, unnormalised, side by side, as diffusers builds them), and
the pooled embedding of the second encoder taken from the first window's tokens, unweighted, as A1111 does.

Positive and negative prompts, and every conditioning of a batch (`pad_to_longest`), are padded to the same number of
tokens with the empty prompt's window (A1111's padding); a negative an SDXL model's config asks to leave as zeros
(`force_zeros_for_empty_prompt`, when none is given) is zeros, and padded with zeros, as diffusers makes it.

The engine still encodes a prompt with no syntax that fits one window with the pipeline's own `encode_prompt`
(`reads_plainly`), so such prompts give exactly the embeddings, and the pictures, they always gave.
"""

from __future__ import annotations

from typing import Any

import torch
from compel import BaseTextualInversionManager, EmbeddingsProvider, ReturnedEmbeddingsType, SplitLongTextMode

from generation.protocol.prompt import Fragment, is_plain, parse_emphasis

#: A full window ends after the last comma among its last this many tokens (A1111's `comma_padding_backtrack`).
COMMA_BACKTRACK = 20

#: One request's conditioning, in the order of diffusers' `encode_prompt`: prompt embeddings, negative prompt
#: embeddings (None without guidance), and for SDXL the pooled prompt and negative prompt embeddings.
Conditioning = tuple[Any, ...]


class _TextualInversions(BaseTextualInversionManager):
    """Expands a multi-vector textual-inversion token `name` into `name name_1 name_2 ...`, as diffusers'
    `maybe_convert_prompt` does for its own encoding, with the tokenizer the ids came from."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def expand_textual_inversion_token_ids_if_necessary(self, token_ids: list[int]) -> list[int]:
        added = self.tokenizer.added_tokens_encoder
        if not added:
            return token_ids
        out: list[int] = []
        for token_id in token_ids:
            out.append(token_id)
            token = self.tokenizer.convert_ids_to_tokens(token_id)
            i = 1
            while token in added and f"{token}_{i}" in added:
                out.append(added[f"{token}_{i}"])
                i += 1
        return out


class _Provider(EmbeddingsProvider):
    """compel's embeddings of one text encoder, never truncating, with A1111's window ends."""

    def __init__(self, tokenizer, text_encoder, kind: ReturnedEmbeddingsType):
        super().__init__(tokenizer, text_encoder, textual_inversion_manager=_TextualInversions(tokenizer),
                         truncate=False, returned_embeddings_type=kind, split_long_text_mode=SplitLongTextMode.BRUTAL)
        comma = tokenizer(",", add_special_tokens=False).input_ids
        self.comma_id = comma[0] if len(comma) == 1 else None

    def _find_next_best_split_point(self, token_ids: list[int], max_length: int, *args: Any, **kwargs: Any) -> int:
        """Where the next window's tokens end: at `max_length`, or after the last comma among the last
        `COMMA_BACKTRACK` tokens when more tokens follow and the next one is no comma (A1111's rule)."""
        if len(token_ids) <= max_length or self.comma_id is None or token_ids[max_length] == self.comma_id:
            return max_length
        for i in range(max_length - 1, max(max_length - 1 - COMMA_BACKTRACK, -1), -1):
            if token_ids[i] == self.comma_id:
                return i + 1
        return max_length

    def token_count(self, text: str) -> int:
        """Tokens of `text` with its start and end token (textual inversions expanded), nothing cut."""
        return len(self.get_token_ids([text], include_start_and_end_markers=True)[0])

    def encode_part(self, part: tuple[Fragment, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings [1, windows x window, width] and token ids [1, windows x window] of one `BREAK` part."""
        ids = self.get_token_ids([f.text for f in part], include_start_and_end_markers=False)
        # A fragment without tokens (spaces) changes nothing, and compel cannot mask out an empty one: leave it out.
        kept = [f for f, t in zip(part, ids, strict=True) if t] or [Fragment("")]
        return self.get_embeddings_for_weighted_prompt_fragments(
            text_batch=[[f.text for f in kept]], fragment_weights_batch=[[f.weight for f in kept]],
            should_return_tokens=True, device=self.device)


class PromptEncoder:
    """Encodes prompts of an SD 1.x/2.x or SDXL pipeline with emphasis, `BREAK` and any length (module docstring).

    Make one per run: compel caches the empty prompt's embedding, which a LoRA on the text encoder changes.
    """

    def __init__(self, pipe):
        self.pipe = pipe
        pairs = [(getattr(pipe, t, None), getattr(pipe, e, None))
                 for t, e in (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"))]
        pairs = [(t, e) for t, e in pairs if t is not None and e is not None]
        #: SDXL: two encoders, penultimate hidden states, pooled embeddings.
        self.is_xl = getattr(pipe, "text_encoder_2", None) is not None
        kind = (ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED if self.is_xl
                else ReturnedEmbeddingsType.LAST_HIDDEN_STATES_NORMALIZED)
        self.providers = [_Provider(t, e, kind) for t, e in pairs]
        self.zero_negative = self.is_xl and bool(pipe.config.get("force_zeros_for_empty_prompt", False))

    def reads_plainly(self, text: str) -> bool:
        """Whether the pipeline's own `encode_prompt` reads `text` as it is meant: no syntax, and it fits a window."""
        return is_plain(text) and all(p.token_count(text) <= p.max_token_count for p in self.providers)

    def encode(self, text: str) -> tuple[torch.Tensor, torch.Tensor | None, list[torch.Tensor]]:
        """The embeddings of one prompt [1, tokens, width], its pooled embedding [1, width] (SDXL, else None) and the
        token ids each encoder was given ([1, tokens] each)."""
        parts = parse_emphasis(text)
        embeds, tokens = [], []
        for provider in self.providers:
            encoded = [provider.encode_part(part) for part in parts]
            embeds.append(torch.cat([z for z, _ in encoded], dim=1))
            tokens.append(torch.cat([t for _, t in encoded], dim=1))
        longest = max(z.shape[1] for z in embeds)  # the encoders' tokenizers may cut windows differently
        embeds = [z if z.shape[1] == longest else self._pad(z, longest, p.empty_z)
                  for z, p in zip(embeds, self.providers, strict=True)]
        pooled = None
        if self.is_xl:
            # The pooled embedding of SDXL's second encoder (diffusers' choice), from the first window, unweighted.
            provider, ids = self.providers[-1], tokens[-1]
            out = provider.text_encoder(ids[:, :provider.max_token_count].to(provider.text_encoder.device))
            pooled = out[0] if out[0].ndim == 2 else out.pooler_output
        return torch.cat(embeds, dim=-1), pooled, tokens

    def encode_request(self, prompt: str, negative: str | None, cfg: bool, num_images: int) -> Conditioning:
        """One request's conditioning as `encode_prompt` returns it, `num_images` copies of each, positive and
        negative padded to the same length."""
        embeds, pooled, _ = self.encode(prompt)
        negative_embeds = negative_pooled = None
        if cfg:
            if negative is None and self.zero_negative:
                negative_embeds = torch.zeros_like(embeds)
                negative_pooled = None if pooled is None else torch.zeros_like(pooled)
            else:
                negative_embeds, negative_pooled, _ = self.encode(negative or "")
        out: list[Any] = [embeds, negative_embeds]
        if self.is_xl:
            out += [pooled, negative_pooled]
        out = [None if t is None else t.repeat(num_images, *[1] * (t.ndim - 1)) for t in out]
        return self.pad_to_longest([tuple(out)])[0]

    def pad_to_longest(self, parts: list[Conditioning]) -> list[Conditioning]:
        """Every prompt and negative prompt embedding of `parts` padded to the most tokens among them: with the empty
        prompt's window, or with zeros where the embedding is all zeros (SDXL's negative left out)."""
        lengths = [t.shape[1] for part in parts for t in part[:2] if t is not None]
        longest = max(lengths, default=0)
        if all(n == longest for n in lengths):
            return parts
        empty = torch.cat([p.empty_z for p in self.providers], dim=-1)
        return [tuple(self._pad(t, longest, empty) if i < 2 and t is not None else t for i, t in enumerate(part))
                for part in parts]

    @staticmethod
    def _pad(embeds: torch.Tensor, tokens: int, empty: torch.Tensor) -> torch.Tensor:
        """`embeds` [batch, n, width] padded to `tokens` with copies of `empty` [1, window, width] (or zeros)."""
        missing = tokens - embeds.shape[1]
        if missing <= 0:
            return embeds
        window = empty.shape[1]
        if missing % window:
            raise ValueError(f"cannot pad {embeds.shape[1]} tokens to {tokens} with windows of {window}")
        if not embeds.any():
            fill = embeds.new_zeros(embeds.shape[0], missing, embeds.shape[2])
        else:
            fill = empty.to(embeds).repeat(embeds.shape[0], missing // window, 1)
        return torch.cat([embeds, fill], dim=1)
