"""GGUF fuzzing: mutated model files must be refused with one line, never crash the process.

`fuzz(count, seed, workdir)` writes seed models (the shipped toy models and synthetic models with
BPE and SentencePiece vocabularies, experts and per-layer arrays, from rast_gguf.synth), makes
`count` mutants of them (truncations, bit flips in the metadata and tensor descriptions, every
integer value set to 0, -1, 2^31, 2^32 - 1, 2^63 and other edges, floats set to 0, NaN, inf, keys
of known hyperparameters added, deleted or given the wrong value type, huge arrays, another
architecture, tokenizer or rope scaling, vocabularies with duplicate, missing or empty tokens) and sends each through a child process that runs what `rast check` runs
(rast_gguf.check.check_models) and, when the check passes, a full load, a context, tokenization,
one decode and detokenization. The child answers one JSON line per mutant: "refused" (a RastError
with a one-line message), "ran", or "traceback" (anything else, with its text). A child that dies
by a signal or does not answer within the time limit is a crash of that mutant; a new child takes
the next one. Many mutants share one child, so start-up costs little. Failing mutants are kept in
`workdir/failures/`. `python -m rast_gguf.fuzz_gguf --count 10000` prints the tallies and exits 1
if any mutant crashed, printed a traceback or gave a multi-line error.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from rast_gguf.gguf_edit import (INT_TYPES, T_ARRAY, T_BOOL, T_FLOAT32, T_INT32, T_INT64, T_STRING, T_UINT32,
                                 T_UINT64, Array, GGUFImage, wrap_int)

SEED_SHAPES = ("tiny-qwen2", "tiny-llama", "tiny-llama-spm", "tiny-llama-moe", "tiny-qwen2-per-layer")
SHIPPED_SEEDS = ("toy-small-base.gguf",)  # one shipped model: the others have the same layout
EDGE_INTS = (0, 1, -1, 2, 3, 7, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1, 100000, 513, 1025)
# Keys llama.cpp reads that the seeds may lack; the fuzzer adds them with edge values.
EXTRA_ARCH_KEYS = ("expert_count", "expert_used_count", "expert_group_count", "expert_group_used_count",
                   "nextn_predict_layers", "attention.key_length", "attention.value_length", "rope.dimension_count",
                   "attention.sliding_window", "rope.scaling.original_context_length", "leading_dense_block_count",
                   "expert_shared_count", "vocab_size", "embedding_length_out")
EXTRA_KEYS = ("tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.unknown_token_id",
              "tokenizer.ggml.seperator_token_id", "tokenizer.ggml.padding_token_id", "tokenizer.ggml.add_bos_token",
              "tokenizer.ggml.add_eos_token", "tokenizer.ggml.add_sep_token", "general.alignment",
              "tokenizer.ggml.token_type_count", "split.count", "split.no")
TEXT = "Hello world! 12345 \u00e9\u00e8 \u4e2d\u6587 <|im_start|> \U0001F600\ttabs\n"
CHILD_TIMEOUT_S = 120.0
_KEEP_FAILURES = 50


# ----------------------------------------------------------------------------- seeds


def write_seeds(directory: Path) -> list[Path]:
    """The seed models: shipped toy models and tiny synthetic ones (f32, a few hundred KB each)."""
    from importlib import resources

    from rast_gguf.synth import SHAPES, write_synthetic_gguf

    directory.mkdir(parents=True, exist_ok=True)
    seeds = []
    for name in SHIPPED_SEEDS:
        target = directory / name
        with resources.as_file(resources.files("rast_gguf").joinpath("data", name)) as source:
            shutil.copyfile(source, target)
        seeds.append(target)
    for name in SEED_SHAPES:
        path = directory / f"{name}.gguf"
        if not path.exists():
            write_synthetic_gguf(path, SHAPES[name], ftype="f32", seed=7)
        seeds.append(path)
    return seeds


# ----------------------------------------------------------------------------- mutants


def _int_kvs(image: GGUFImage) -> list:
    return [kv for kv in image.kvs if kv.value_type in INT_TYPES
            or (kv.value_type == T_ARRAY and kv.value.elem_type in INT_TYPES and len(kv.value.items) <= 4096)]


def _arch(image: GGUFImage) -> str:
    kv = image.get("general.architecture")
    return kv.value.decode("utf-8", "replace") if kv is not None and isinstance(kv.value, bytes) else "llama"


def _edge_value_and_type(rng: random.Random, value_type: int) -> tuple[int, int]:
    value = rng.choice(EDGE_INTS)
    if rng.random() < 0.5 or value_type not in INT_TYPES:
        return value, value_type  # stored wrapped to the key's own width
    fitting = T_INT64 if value < 0 else (T_UINT32 if value < 2**32 else T_UINT64)
    return value, fitting


def _set_int(rng: random.Random, image: GGUFImage) -> str:
    kvs = _int_kvs(image)
    kv = rng.choice(kvs)
    if kv.value_type == T_ARRAY:
        items = kv.value.items
        index = rng.randrange(len(items)) if items else 0
        value = rng.choice(EDGE_INTS)
        if items:
            items[index] = wrap_int(value, kv.value.elem_type)
        return f"{kv.key}[{index}] = {value}"
    value, value_type = _edge_value_and_type(rng, kv.value_type)
    kv.value_type, kv.value = value_type, wrap_int(value, value_type)
    return f"{kv.key} = {kv.value} (type {value_type})"


def _add_key(rng: random.Random, image: GGUFImage) -> str:
    key = (f"{_arch(image)}.{rng.choice(EXTRA_ARCH_KEYS)}" if rng.random() < 0.7 else rng.choice(EXTRA_KEYS))
    if key.endswith(("add_bos_token", "add_eos_token", "add_sep_token")):
        image.set(key, T_BOOL, rng.random() < 0.5)
        return f"{key} = bool"
    value, value_type = _edge_value_and_type(rng, T_UINT32)
    if rng.random() < 0.3:  # small plausible values hit the cross-checks (experts used <= experts, ...)
        value, value_type = rng.randrange(0, 9), T_UINT32
    image.set(key, value_type, wrap_int(value, value_type))
    return f"add {key} = {value}"


def _set_float_or_text(rng: random.Random, image: GGUFImage) -> str:
    """Float hyperparameters set to edge values, or a string choice (rope scaling, pre-tokenizer) changed."""
    floats = [kv for kv in image.kvs if kv.value_type == T_FLOAT32]
    if floats and rng.random() < 0.6:
        kv = rng.choice(floats)
        kv.value = rng.choice([0.0, -1.0, float("nan"), float("inf"), -float("inf"), 1e-45, 3e38])
        return f"{kv.key} = {kv.value}"
    arch = _arch(image)
    key, values = rng.choice([
        (f"{arch}.rope.scaling.type", [b"yarn", b"linear", b"longrope", b"none", b"bogus", b""]),
        ("tokenizer.ggml.pre", [b"default", b"llama3", b"qwen2", b"deepseek-llm", b"gemma4", b"bogus", b""]),
        ("general.architecture", [b"llama", b"qwen2", b"qwen2moe", b"gemma", b"rwkv6", b"bert", b"clip", b"bogus"]),
    ])
    image.set(key, T_STRING, rng.choice(values))
    if key.endswith("scaling.type") and rng.random() < 0.5:
        image.set(f"{arch}.rope.scaling.factor", T_FLOAT32, rng.choice([0.0, 0.5, 4.0, float("nan")]))
    return f"{key} changed"


def _wrong_type(rng: random.Random, image: GGUFImage) -> str:
    kv = rng.choice(image.kvs)
    choice = rng.randrange(6)
    if choice == 0:
        kv.value_type, kv.value = T_STRING, b"eight"
    elif choice == 1:
        kv.value_type, kv.value = T_FLOAT32, rng.choice([1.5, -1.0, float("nan"), float("inf"), 1e30])
    elif choice == 2:
        kv.value_type, kv.value = T_BOOL, True
    elif choice == 3:
        kv.value_type, kv.value = T_ARRAY, Array(T_INT32, [rng.choice(EDGE_INTS) for _ in range(rng.randrange(0, 9))])
    elif choice == 4:
        kv.value_type, kv.value = T_ARRAY, Array(T_STRING, [b"a", b"b"])
    else:
        kv.value_type = rng.choice([T_INT32, T_UINT64, T_INT64, 0, 1, 2, 3])
        kv.value = wrap_int(rng.choice(EDGE_INTS), kv.value_type)
    return f"{kv.key} -> type {kv.value_type}"


def _huge_array(rng: random.Random, image: GGUFImage) -> str:
    kv = rng.choice(image.kvs)
    n = rng.choice([100_000, 1_000_000])
    if rng.random() < 0.5:
        kv.value_type, kv.value = T_ARRAY, Array(T_INT32, [rng.choice((0, 1, -1, 2**31 - 1))] * n)
    else:
        kv.value_type, kv.value = T_ARRAY, Array(T_STRING, [b"x" * rng.randrange(0, 3)] * (n // 10))
    return f"{kv.key} -> array of {len(kv.value.items)}"


def _vocab_edit(rng: random.Random, image: GGUFImage) -> str:
    tokens = image.get("tokenizer.ggml.tokens")
    if tokens is None or tokens.value_type != T_ARRAY or not tokens.value.items:
        return _set_int(rng, image)
    items = tokens.value.items
    index = rng.randrange(len(items))
    choice = rng.randrange(7)
    if choice == 0:
        other = rng.randrange(len(items))
        items[index] = items[other]
        return f"token {index} = token {other} (duplicate)"
    if choice == 1:
        items[index] = b""
        return f"token {index} empty"
    if choice == 2:
        byte_tokens = [i for i, t in enumerate(items) if t.startswith(b"<0x")]
        victim = rng.choice(byte_tokens) if byte_tokens else index
        items[victim] = b"<byte%d>" % victim
        return f"byte token {victim} renamed"
    if choice == 3:
        del items[index:]
        return f"vocabulary cut to {index} tokens"
    if choice == 4:
        items[index] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 6)))
        return f"token {index} random bytes"
    if choice == 5:
        types = image.get("tokenizer.ggml.token_type")
        if types is not None and types.value_type == T_ARRAY and types.value.items:
            types.value.items[index % len(types.value.items)] = rng.choice([-1, 0, 2, 3, 4, 5, 6, 7, 2**31 - 1])
            return f"token type {index} changed"
    image.set("tokenizer.ggml.model", T_STRING, rng.choice([b"llama", b"gpt2", b"t5", b"bert", b"rwkv", b"plamo2",
                                                            b"none", b"gemma4", b"test", b"whitespace"]))
    return "tokenizer model changed"


def _delete_key(rng: random.Random, image: GGUFImage) -> str:
    kv = rng.choice(image.kvs)
    image.delete(kv.key)
    return f"delete {kv.key}"


def _bit_flips(rng: random.Random, data: bytes, image: GGUFImage) -> tuple[bytes, str]:
    end = len(data) - len(image.data)  # metadata and tensor descriptions
    buf = bytearray(data)
    flips = []
    for _ in range(rng.randrange(1, 9)):
        position = rng.randrange(end)
        buf[position] ^= 1 << rng.randrange(8)
        flips.append(position)
    return bytes(buf), f"bit flips at {flips}"


def _truncate(rng: random.Random, data: bytes, image: GGUFImage) -> tuple[bytes, str]:
    end = len(data) - len(image.data)
    cut = rng.randrange(end) if rng.random() < 0.7 else rng.randrange(end, len(data))
    return data[:cut], f"truncated to {cut} of {len(data)} bytes"


_KV_MUTATIONS = ((_set_int, 40), (_add_key, 15), (_wrong_type, 10), (_vocab_edit, 10), (_delete_key, 5),
                 (_set_float_or_text, 6), (_huge_array, 2))
_BYTE_MUTATIONS = ((_bit_flips, 12), (_truncate, 6))


def make_mutant(rng: random.Random, seed_data: bytes) -> tuple[bytes, str]:
    """One mutant of a seed file: a few metadata edits, or byte-level damage."""
    image = GGUFImage.parse(seed_data)
    mutations = _KV_MUTATIONS + _BYTE_MUTATIONS
    mutation = rng.choices([m for m, _ in mutations], [w for _, w in mutations])[0]
    if mutation in (_bit_flips, _truncate):
        return mutation(rng, seed_data, image)
    steps = [mutation(rng, image)]
    while rng.random() < 0.3:  # sometimes stack edits
        extra = rng.choices([m for m, _ in _KV_MUTATIONS], [w for _, w in _KV_MUTATIONS])[0]
        steps.append(extra(rng, image))
    return image.serialize(), "; ".join(steps)


# ----------------------------------------------------------------------------- the child


def run_one(path: str) -> dict:
    """What a user's commands do with a model file: `rast check`, then a full load and one decode."""
    from rast_gguf.check import check_models
    from rast_gguf.errors import RastError
    from rast_gguf.handles import Batch, Context, Model

    try:
        report = check_models(path, [])
        if not report.ok:
            return {"outcome": "refused", "stage": "check", "message": report.problems[0]}
        model = Model(path)
        try:
            tokens = model.tokenize(TEXT)
            context = Context(model, n_ctx=64, n_batch=64, n_threads=1)
            batch = Batch(64)
            try:
                tokens = tokens[:32] or [0]
                batch.set_tokens(tokens, 0)
                context.decode(batch)
                logits = context.logits()
                top = int(logits.argmax()) if logits.size else 0
                piece = model.token_bytes(top)
                text = model.token_text(top)
            finally:
                batch.close()
                context.close()
        finally:
            model.close()
        return {"outcome": "ran", "n_tokens": len(tokens), "piece": piece.hex(), "text_len": len(text)}
    except RastError as e:
        return {"outcome": "refused", "stage": "load", "message": str(e)}
    except Exception:
        return {"outcome": "traceback", "message": traceback.format_exc()}


def child_main() -> None:
    """Read mutant paths from stdin, answer one JSON line each on stdout."""
    import rast_gguf  # noqa: F401  (libllama first)

    # Nothing but answers on the protocol stream: C code that prints to fd 1 goes to stderr instead.
    sys.stdout.flush()
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    for line in sys.stdin:
        result = run_one(line.strip())
        out.write(json.dumps(result) + "\n")
        out.flush()


class _Child:
    def __init__(self, log_path: Path):
        self.log = open(log_path, "ab")
        # GGML_NO_BACKTRACE: an abort would otherwise attach gdb for a backtrace (seconds per crash)
        env = dict(os.environ, RAST_VERBOSE="0", OMP_NUM_THREADS="1", GGML_NO_BACKTRACE="1")
        self.proc = subprocess.Popen([sys.executable, "-m", "rast_gguf.fuzz_gguf", "--child"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log, env=env, preexec_fn=_limit_memory)
        self.timed_out = False

    def ask(self, path: Path, timeout_s: float) -> dict | None:
        """The child's answer for one file, or None when it died or hung (then it is gone)."""
        try:
            self.proc.stdin.write(f"{path}\n".encode())
            self.proc.stdin.flush()
        except BrokenPipeError:
            return None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        self.timed_out = not ready
        line = self.proc.stdout.readline() if ready else b""
        if not line:
            return None
        return json.loads(line)

    def death(self) -> str:
        """Why the child stopped answering (it is killed if it still runs)."""
        if not self.timed_out:  # its output ended: it is exiting, wait for the status
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
            return "hang"
        code = self.proc.returncode
        return f"signal {signal.Signals(-code).name}" if code < 0 else f"exit {code}"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def _limit_memory() -> None:
    import resource

    limit = 8 * 2**30  # a mutant that makes llama.cpp allocate wildly gets bad_alloc, not the machine's memory
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


# ----------------------------------------------------------------------------- the run


@dataclass
class FuzzResult:
    count: int = 0
    tallies: Counter = field(default_factory=Counter)
    failures: list = field(default_factory=list)  # (mutant file, description, what happened)
    seconds: float = 0.0
    child_starts: int = 0

    @property
    def n_failed(self) -> int:
        return len(self.failures)

    def summary(self) -> str:
        lines = [f"GGUF mutants: {self.count} in {self.seconds:.0f} s ({self.child_starts} child processes)"]
        for outcome in ("refused at check", "refused at load", "ran", "signal", "traceback", "multi-line error",
                        "hang", "exit"):
            lines.append(f"  {outcome:18s} {self.tallies.get(outcome, 0)}")
        for path, description, what in self.failures[:20]:
            lines.append(f"  FAILED {path}: {description}: {what.strip().splitlines()[-1] if what.strip() else what}")
        return "\n".join(lines)


def fuzz(count: int, seed: int = 0, workdir: Path | None = None, timeout_s: float = CHILD_TIMEOUT_S,
         progress=None) -> FuzzResult:
    own_dir = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="rast-fuzz-")) if own_dir else Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    failures_dir = workdir / "failures"
    rng = random.Random(seed)
    seeds = [(path.name, path.read_bytes()) for path in write_seeds(workdir / "seeds")]
    result = FuzzResult()
    mutant_path = workdir / "mutant.gguf"
    child = None
    started = time.monotonic()
    try:
        for index in range(count):
            seed_name, seed_data = seeds[index % len(seeds)]
            data, description = make_mutant(rng, seed_data)
            mutant_path.write_bytes(data)
            if child is None:
                child = _Child(workdir / "child-stderr.log")
                result.child_starts += 1
            answer = child.ask(mutant_path, timeout_s)
            result.count += 1
            if answer is None:
                what = child.death()
                child.close()
                child = None
                kind = what.split()[0]
                result.tallies[kind] += 1
                _keep_failure(result, failures_dir, index, data, f"{seed_name}: {description}", what)
            elif answer["outcome"] == "traceback":
                result.tallies["traceback"] += 1
                _keep_failure(result, failures_dir, index, data, f"{seed_name}: {description}", answer["message"])
            elif answer["outcome"] == "refused" and "\n" in answer["message"].strip():
                result.tallies["multi-line error"] += 1
                _keep_failure(result, failures_dir, index, data, f"{seed_name}: {description}", answer["message"])
            elif answer["outcome"] == "refused":
                result.tallies[f"refused at {answer['stage']}"] += 1
            else:
                result.tallies["ran"] += 1
            if progress and (index + 1) % 500 == 0:
                progress(f"{index + 1}/{count} mutants, {result.n_failed} failed, {time.monotonic() - started:.0f} s")
    finally:
        if child is not None:
            child.close()
        result.seconds = time.monotonic() - started
        if own_dir and not result.failures:
            shutil.rmtree(workdir, ignore_errors=True)
    return result


def _keep_failure(result: FuzzResult, failures_dir: Path, index: int, data: bytes, description: str,
                  what: str) -> None:
    path = failures_dir / f"mutant-{index:06d}.gguf"
    if len(result.failures) < _KEEP_FAILURES:
        failures_dir.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.with_suffix(".txt").write_text(f"{description}\n{what}\n")
    result.failures.append((str(path), description, what))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rast_gguf.fuzz_gguf", description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=10_000, help="number of mutants (default 10000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (a run is reproducible)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep seeds and failing mutants here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main()
        return 0
    result = fuzz(args.count, args.seed, args.workdir, progress=lambda line: print(line, flush=True))
    print(result.summary())
    return 1 if result.failures else 0


if __name__ == "__main__":
    sys.exit(main())
