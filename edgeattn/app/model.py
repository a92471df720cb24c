"""`load(folder)`: an exported folder as one object an app keeps and calls from any thread.

Loading reads and checks the manifest, loads the tokenizer and makes the onnxruntime sessions once; each
call then only runs them. A model keeps no state of its own between calls: the KV cache, the pixels and
the token ids of a request live in that call, and onnxruntime's `InferenceSession.run` may run on several
threads at once. The one shared thing that is not thread-safe, a Hugging Face fast tokenizer ("Already
borrowed" when two threads use it together), is used under a lock.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, Literal, Sequence, overload

import numpy as np

from edgeattn.app.requests import (
    API, Names, as_count, check_generate_request, check_image_tokens, check_providers, check_text, check_threads,
    load_tokenizer, pixel_batch, pixels_of,
)
from edgeattn.app.results import Encoded, Generated
from edgeattn.app.stream import TextStream, generated
from edgeattn.errors import EdgeAttnError
from edgeattn.manifest import Manifest, read_manifest
from edgeattn.runtime.encode import run_text_encoder, run_vision_encoder, text_encoder_session, text_feeds
from edgeattn.runtime.encode import vision_encoder_session
from edgeattn.runtime.generate import DecoderRunner, check_generation_length, position_limit


def load(folder: str | os.PathLike, threads: int | None = None, providers: Sequence[str] | None = None, *,
         manifest: Manifest | None = None, names: Names = API) -> Model:
    """The model in an exported folder, ready to serve requests.

    ``threads`` caps onnxruntime's intra-op threads per session (its default otherwise, or
    ``EDGEATTN_THREADS``); ``providers`` lists onnxruntime execution providers in order of preference
    (CPU by default). ``manifest`` (the folder's, already read) and ``names`` (how messages spell the
    settings) are for front ends such as the CLI.
    """
    threads = check_threads(threads, names)
    wanted = check_providers(providers)
    folder = Path(folder)
    return Model(folder, manifest if manifest is not None else read_manifest(folder), threads, wanted, names)


class Model:
    """An exported decoder LM, VLM, text encoder or vision encoder, with its sessions made once.

    ``generate`` serves decoders and VLMs, ``embed`` text encoders, ``image_features`` VLMs and vision
    encoders. All three may be called from several threads at once.
    """

    def __init__(self, folder: Path, manifest: Manifest, threads: int | None, providers: list[str] | None,
                 names: Names = API) -> None:
        self.folder = folder
        self.manifest = manifest
        self._names = names
        self._lock = threading.Lock()  # guards the tokenizer, the one piece that is not thread-safe
        self._tokenizer = load_tokenizer(folder, manifest) if manifest.family != "vision" else None
        self._runner: DecoderRunner | None = None
        self._encoder: Any = None  # the text encoder's session
        self._vision: Any = None  # a vision encoder's session (a VLM's is the runner's)
        if manifest.family in ("decoder", "vlm"):
            self._runner = DecoderRunner(folder, manifest, threads, providers=providers)
        elif manifest.family == "encoder":
            self._encoder = text_encoder_session(folder, manifest, threads, providers)
        else:
            self._vision = vision_encoder_session(folder, manifest, threads, providers)
        if providers:
            _check_started(self._sessions(), providers[0])

    @property
    def family(self) -> str:
        """The manifest's family: decoder, vlm, encoder or vision."""
        return self.manifest.family

    def __repr__(self) -> str:
        return f"Model({str(self.folder)!r}, family={self.family!r}, model={self.manifest.model!r})"

    @overload
    def generate(self, prompt: str, image: Any = None, max_new_tokens: int = 16, image_tokens: int | None = None,
                 stream: Literal[False] = False) -> Generated: ...

    @overload
    def generate(self, prompt: str, image: Any = None, max_new_tokens: int = 16, image_tokens: int | None = None, *,
                 stream: Literal[True]) -> TextStream: ...

    def generate(self, prompt: str, image: Any = None, max_new_tokens: int = 16, image_tokens: int | None = None,
                 stream: bool = False) -> Generated | TextStream:
        """Greedy generation from ``prompt`` (and, for a VLM, ``image``: a file path, an H x W x 3 uint8 array
        or a PIL image) of up to ``max_new_tokens`` tokens.

        ``image_tokens`` sets how many visual tokens the image keeps, for an export pruned with a run-time
        budget (``--prune METHOD:K,dynamic=1``). Every setting is checked before this returns; with
        ``stream=True`` the result is a `TextStream` that runs the model as it is iterated.
        """
        runner = self._need(self._runner, "generate", "a decoder LM or a VLM")
        ids, pixels, budget, count = self._generation_inputs(prompt, image, max_new_tokens, image_tokens)
        if stream:
            return TextStream(runner.stream(ids, count, pixels, budget), self._decode)
        generation = runner.generate(ids, count, pixels, num_tokens=budget)
        return generated(generation, self._decode(generation.tokens))

    def embed(self, texts: str | Sequence[str]) -> np.ndarray:
        """Sentence embeddings [len(texts), D] of a text encoder (one text gives [1, D])."""
        return self.run_embed(texts).outputs["embedding"]

    def image_features(self, images: Any, prompt: str | None = None, image_tokens: int | None = None
                       ) -> dict[str, np.ndarray]:
        """The vision outputs for one image or a list of them: ``image_features`` [N, T, D] and, for a pruned
        export, ``kept_indices`` [N, T]. A VLM whose pruning is guided by the prompt needs ``prompt``;
        ``image_tokens`` is a run-time budget as in `generate`."""
        return dict(self.run_image_features(images, prompt, image_tokens).outputs)

    def run_embed(self, texts: str | Sequence[str]) -> Encoded:
        """`embed` with the wall time of the onnxruntime run."""
        session = self._need(self._encoder, "embed", "a text encoder")
        batch = [texts] if isinstance(texts, str) else list(texts)
        for text in batch:
            check_text(text, self._names.prompt)
        with self._lock:
            feeds = text_feeds(self.manifest, self._tokenizer, batch, self._names.prompt)
        out = run_text_encoder(session, feeds)
        return Encoded({"embedding": out["embedding"]}, out["latency_ms"])

    def run_image_features(self, images: Any, prompt: str | None = None, image_tokens: int | None = None) -> Encoded:
        """`image_features` with the wall time of the onnxruntime run(s)."""
        if self._vision is not None:
            return self._vision_encoder(images, prompt, image_tokens)
        vlm = self._runner if self.family == "vlm" else None
        runner = self._need(vlm, "image_features", "a VLM or a vision encoder")
        return self._vlm_vision(runner, images, prompt, image_tokens)

    def _vision_encoder(self, images: Any, prompt: str | None, image_tokens: int | None) -> Encoded:
        if image_tokens is not None:
            raise EdgeAttnError(f"{self._names.image_tokens} sets a VLM's visual-token budget; this folder holds a "
                                "vision model")
        if prompt is not None:
            raise EdgeAttnError(f"{self._names.prompt} needs a language model or a text encoder; this folder holds a "
                                "vision model")
        out = run_vision_encoder(self._vision, self.manifest, pixel_batch(images, self.manifest, self._names.image))
        return Encoded(out["outputs"], out["latency_ms"])

    def _vlm_vision(self, runner: DecoderRunner, images: Any, prompt: str | None, image_tokens: int | None) -> Encoded:
        names = self._names
        budget = None if image_tokens is None else as_count(image_tokens, names.image_tokens)
        if budget is not None:
            check_image_tokens(self.manifest, budget, names)
        pixels = pixel_batch(images, self.manifest, names.image)
        guidance = None
        if runner.needs_prompt:
            if prompt is None:
                raise EdgeAttnError(f"this export prunes visual tokens by the prompt; give image_features a "
                                    f"{names.prompt}")
            ids = self._encode(check_text(prompt, names.prompt))
            if not ids:
                raise EdgeAttnError(f"the prompt is empty (0 tokens); give a {names.prompt} with some text")
            guidance = np.repeat(runner.prompt_embeddings(ids, None), len(pixels), axis=0)
        elif prompt is not None:
            raise EdgeAttnError(f"this export's vision component does not read the prompt; leave {names.prompt} out")
        start = time.perf_counter()
        outputs = runner.image_features(pixels, guidance, budget)
        return Encoded(outputs, (time.perf_counter() - start) * 1e3)

    def _generation_inputs(self, prompt: str, image: Any, max_new_tokens: Any, image_tokens: Any
                           ) -> tuple[list[int], np.ndarray | None, int | None, int]:
        """(prompt ids with the image's placeholders, pixels, budget, max_new_tokens), every setting checked."""
        names, manifest = self._names, self.manifest
        check_text(prompt, names.prompt)
        count = as_count(max_new_tokens, names.max_new_tokens)
        budget = None if image_tokens is None else as_count(image_tokens, names.image_tokens)
        check_generate_request(manifest, image is not None, count, budget, names)
        ids = self._encode(prompt)
        pixels = None
        if image is not None:
            pixels = pixels_of(image, manifest, names.image)
            placeholders = budget if budget is not None else manifest.image_token_count
            ids = [manifest.image_token_id] * (placeholders or 0) + ids
        limit = position_limit(manifest, "decoder", self._tokenizer)
        check_generation_length(len(ids), count, limit, names.prompt, names.max_new_tokens)
        return ids, pixels, budget, count

    def _encode(self, text: str) -> list[int]:
        with self._lock:
            return list(self._tokenizer(text, verbose=False)["input_ids"])

    def _decode(self, tokens: Sequence[int]) -> str:
        with self._lock:
            return self._tokenizer.decode(list(tokens), skip_special_tokens=True)

    def _sessions(self) -> list[Any]:
        runner = self._runner
        parts = [runner.embed, runner.decoder, runner.vision] if runner is not None else [self._encoder, self._vision]
        return [session for session in parts if session is not None]

    def _need(self, part: Any, method: str, what: str) -> Any:
        if part is None:
            raise EdgeAttnError(f"{method} needs {what}; this folder holds a {_FAMILY_WORDS[self.family]}")
        return part


def _check_started(sessions: list[Any], provider: str) -> None:
    """onnxruntime falls back to the CPU, with only a log line, when a provider it lists cannot start here
    (a CUDA build without the CUDA libraries): an app that asked for that provider is told in one line."""
    for session in sessions:
        if provider not in session.get_providers():
            raise EdgeAttnError(f"onnxruntime could not start {provider} here (its log says why) and would run on "
                                f"{', '.join(session.get_providers())}; install what it needs or leave providers out")


_FAMILY_WORDS = {"decoder": "text-only decoder", "vlm": "VLM", "encoder": "text encoder", "vision": "vision encoder"}
