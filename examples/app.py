"""A small app on edgeattn's Python API: load an exported folder once, then stream several requests from
several threads at once, printing each piece as it arrives.

    edgeattn export demo:tiny-llava --out llava
    python examples/app.py llava --image photo.png --prompt "Describe the picture." --prompt "What is in it?"

Each request runs on its own thread against the one loaded model. A piece prints as
`[1] "text"` (JSON, so that half-finished or non-printing text stays on one line), and each request ends
with `[1] done: N tokens, first token after X ms` and its whole text. Exits 0 when every request finished.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading

import edgeattn
from edgeattn.app import Model
from edgeattn.errors import EdgeAttnError

PROMPTS = ["Describe the picture.", "What colour is it?"]


def stream_request(model: Model, number: int, prompt: str, args: argparse.Namespace, start: threading.Barrier,
                   out: threading.Lock, failures: list[str]) -> None:
    """One request: stream its text, printing each piece with the request's number as it comes."""
    start.wait()  # every request begins at once, on the one model
    try:
        stream = model.generate(prompt, image=args.image, max_new_tokens=args.max_new_tokens,
                                image_tokens=args.image_tokens, stream=True)
        for piece in stream:
            with out:
                print(f"[{number}] {json.dumps(piece)}", flush=True)
        result = stream.result
        with out:
            print(f"[{number}] done: {len(result.tokens)} tokens, first token after {result.ttft_ms:.1f} ms, "
                  f"text {json.dumps(result.text)}", flush=True)
    except EdgeAttnError as err:  # a request the model refuses (too long a prompt, a bad image, ...)
        failures.append(f"[{number}] {err}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Stream requests to one loaded edgeattn model from several threads.")
    parser.add_argument("folder", help="a folder written by `edgeattn export`")
    parser.add_argument("--prompt", action="append", help="one request per --prompt (default: two requests)")
    parser.add_argument("--image", help="an image file, for a VLM folder")
    parser.add_argument("--image-tokens", type=int, help="visual tokens to keep (an export pruned with dynamic=1)")
    parser.add_argument("--max-new-tokens", type=int, default=12)
    parser.add_argument("--threads", type=int, help="onnxruntime intra-op threads per session")
    args = parser.parse_args(argv)
    try:
        model = edgeattn.load(args.folder, threads=args.threads)  # sessions and tokenizer, made once
    except EdgeAttnError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    prompts = args.prompt or PROMPTS
    start, out, failures = threading.Barrier(len(prompts)), threading.Lock(), []
    workers = [threading.Thread(target=stream_request, args=(model, number, prompt, args, start, out, failures))
               for number, prompt in enumerate(prompts, start=1)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    for failure in failures:
        print(f"error: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
