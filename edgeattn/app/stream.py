"""Streaming generation: token ids as the decoder chooses them, turned into text pieces.

Decoding token by token would cut characters in half: a byte-level tokenizer spends several tokens on one
non-ASCII character, and a SentencePiece one decides a word's leading space from its neighbour. So each
piece is the difference between the decoded text of a short window of tokens with and without the newest
ones, the window starting at the previous piece (its context); text that ends in an unfinished character
(U+FFFD) is held back until the next token completes it. The pieces join to the text of all the tokens.
"""

from __future__ import annotations

from typing import Callable, Generator, Iterator, Sequence

from edgeattn.app.results import Generated
from edgeattn.runtime.generate import Generation

REPLACEMENT = "\ufffd"  # what a decoder writes for bytes that are not (yet) a whole UTF-8 character


class TextStream(Iterator[str]):
    """An iterator of the text pieces of one greedy generation, produced as the decoder runs.

    ``tokens`` grows as it goes; ``result`` is the finished `Generated` once the iterator is exhausted
    (None before). Not for sharing between threads: each request gets its own stream.
    """

    def __init__(self, steps: Generator[int, None, Generation], decode: Callable[[Sequence[int]], str]) -> None:
        self._steps = steps
        self._decode = decode
        self.tokens: list[int] = []
        self.result: Generated | None = None
        self._context = 0  # tokens before this index are done with
        self._shown = 0  # the text of tokens[_context:_shown] has been yielded: the next piece's context

    def __iter__(self) -> TextStream:
        return self

    def __next__(self) -> str:
        while self.result is None:
            try:
                token = next(self._steps)
            except StopIteration as done:
                self.result = self._finish(done.value)
                piece = self._piece(final=True)
                if piece:
                    return piece
                break
            self.tokens.append(token)
            piece = self._piece(final=False)
            if piece:
                return piece
        raise StopIteration

    def close(self) -> None:
        """Stop generating (the rest of the tokens are never computed)."""
        self._steps.close()

    def _piece(self, final: bool) -> str:
        """The text the tokens since the last piece add: "" when they add none yet, or (unless ``final``)
        when it ends in an unfinished character."""
        before = self._decode(self.tokens[self._context : self._shown])
        text = self._decode(self.tokens[self._context :])
        if len(text) <= len(before) or (text.endswith(REPLACEMENT) and not final):
            return ""
        self._context, self._shown = self._shown, len(self.tokens)
        return text[len(before) :]

    def _finish(self, generation: Generation) -> Generated:
        return generated(generation, self._decode(generation.tokens))


def generated(generation: Generation, text: str) -> Generated:
    """The API's result for a runtime `Generation` and its decoded text."""
    return Generated(text=text, tokens=tuple(generation.tokens), prompt_tokens=len(generation.prompt_tokens),
                     ttft_ms=generation.ttft_ms, tpot_ms=generation.tpot_ms, stages_ms=dict(generation.stages_ms),
                     kept_indices=None if generation.kept_indices is None else tuple(generation.kept_indices))
