"""Fuzzing the user-facing inputs through the CLI: batch JSONL records, chat command lines,
config.json and safetensors headers. Each mutant must end in a result or a one-line error, never a
traceback; good batch records are written exactly once; a refused conversion leaves no file.

The test suite runs small counts (tests/test_fuzz_inputs.py). Large counts, with tallies printed:

    .venv/bin/python tests/fuzz_inputs.py --jsonl 2000 --chat 500 --convert 1000 --seed 1
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

# --- JSONL records ----------------------------------------------------------------------------------

WEIRD_VALUES = [0, -1, 1, 2**31, 2**63, 3000000000, -2**63, 1e308, -0.0, 0.5, 1.5, "x", "", None, True, [],
                {}, [1, 2], "\ud800", "caf\u00e9", 10**50]


def good_record(i: int, rng: random.Random) -> dict:
    record = {"id": f"good-{i:06d}", "prompt": rng.choice(["Once upon a time", "Q: 1+2=", "Hello", "The sky is"])}
    if rng.random() < 0.3:
        record["messages"] = [{"role": "user", "content": record.pop("prompt")}]
    if rng.random() < 0.3:
        record["temp"] = rng.choice([0, 0.5, 1.0])
    if rng.random() < 0.2:
        record["stop"] = rng.choice(["\n", [".", "!"]])
    if rng.random() < 0.2:
        record["extra"] = {"gold": i, "tags": ["a", "b"]}
    return record


def mutate_text(line: str, rng: random.Random) -> bytes:
    data = bytearray(line.encode())
    kind = rng.randrange(9)
    if kind == 0 and data:  # flip a byte
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif kind == 1:  # truncate
        del data[rng.randrange(len(data)):]
    elif kind == 2:  # insert junk bytes
        at = rng.randrange(len(data) + 1)
        data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 6)))
    elif kind == 3:
        return b"[" * rng.choice([10, 1000, 100000]) + b"]" * rng.choice([0, 10])
    elif kind == 4:
        return b'{"id": "mut", "prompt": "a", "n": ' + b"9" * rng.choice([4301, 5000, 10]) + b"}"
    elif kind == 5:
        return rng.choice([b"\xef\xbb\xbf" + bytes(data), b"\x00" * 8, b"caf\xe9", b"null", b'"str"', b"1e999"])
    elif kind == 6:
        return data.replace(b'"', b"'", 1)
    elif kind == 7:
        return bytes(data) + b" trailing"
    else:
        return bytes(data) * 2
    return bytes(data)


def mutant_record(i: int, rng: random.Random) -> bytes:
    record = good_record(i, rng)
    record["id"] = f"mut-{i:06d}"
    if rng.random() < 0.5:
        return mutate_text(json.dumps(record), rng)
    field = rng.choice(["id", "prompt", "messages", "n", "max_tokens", "stop", "alpha", "temp", "top_k",
                        "top_p", "min_p", "seed", "extra"])
    value = rng.choice(WEIRD_VALUES)
    if field == "messages":
        value = rng.choice([value, [{"role": "user"}], [{"role": value, "content": "x"}],
                            [{"role": "user", "content": value}]])
    if field == "n" and isinstance(value, int) and not isinstance(value, bool) and 2 < value:
        value = 1025 if value < 2**31 else value  # a valid huge n would only make the run slow
    record[field] = value
    return json.dumps(record, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")


def fuzz_jsonl(count: int, models: list[str], workdir: Path, seed: int = 0) -> Counter:
    """`count` records (about a third good) through two `rast batch` runs (the second resumes)."""
    rng = random.Random(seed)
    lines, good_ids = [], []
    for i in range(count):
        if rng.random() < 0.35:
            record = good_record(i, rng)
            good_ids.append(record["id"])
            lines.append(json.dumps(record).encode())
        else:
            lines.append(mutant_record(i, rng))
    src, out = workdir / "fuzz.jsonl", workdir / "fuzz.out.jsonl"
    src.write_bytes(b"\n".join(line.replace(b"\n", b" ") for line in lines) + b"\n")
    tally = Counter(records=count, good=len(good_ids))
    for run in ("first", "resume"):
        proc = subprocess.run([sys.executable, "-m", "rast_gguf.cli.app", "batch", str(src), "-o", str(out),
                               *models, "-n", "2", "-c", "64", "-t", "1", "-np", "8", "--seed", "3",
                               "--no-progress"], capture_output=True, timeout=3600)
        err = proc.stderr.decode(errors="replace")
        tally[f"{run} exit {proc.returncode}"] += 1
        tally["tracebacks"] += err.count("Traceback")
        if run == "first":
            tally["bad lines reported"] = sum(1 for line in err.splitlines() if line.startswith("line "))
    written = [json.loads(line)["id"] for line in out.read_text(encoding="utf-8").splitlines()]
    counts = Counter(written)
    tally["good written once"] = sum(counts[i] == 1 for i in good_ids)
    tally["good missing"] = sum(counts[i] == 0 for i in good_ids)
    tally["written twice"] = sum(c > 1 for c in counts.values())
    tally["mutants accepted"] = sum(1 for i in written if str(i).startswith("mut-"))
    reported_or_written = tally["bad lines reported"] + len(written)
    tally["lines unaccounted"] = count - reported_or_written
    return tally


# --- chat commands ------------------------------------------------------------------------------------

def chat_lines(count: int, rng: random.Random, workdir: Path) -> list[bytes]:
    saved = workdir / "saved.json"
    lines = [b"Hello", f"/save {saved}".encode()]
    for _ in range(count):
        kind = rng.randrange(8)
        if kind == 0:
            lines.append(rng.choice([b"/alpha", b"/temp"]) + b" " + rng.choice(
                [b"x", b"nan", b"inf", b"-1", b"1e309", b"0.5", b"", b"1 2", b"\xff"]))
        elif kind == 1:
            lines.append(rng.choice([b"/load", b"/save"]) + b" " + rng.choice(
                [str(saved).encode(), str(workdir / "m.json").encode(), b"/", b"/nonexistent/dir/x.json", b"",
                 str(workdir).encode(), b"\xff\xfe.json"]))
        elif kind == 2:  # a mutated saved chat, then /load it
            data = saved.read_bytes() if saved.exists() else b"{}"
            mutated = mutate_text(data.decode("utf-8", "replace").replace("\n", " "), rng)
            (workdir / "m.json").write_bytes(mutated)
            lines.append(f"/load {workdir / 'm.json'}".encode())
        elif kind == 3:
            lines.append(bytes(rng.randrange(1, 256) for _ in range(rng.randrange(1, 12))).replace(b"\n", b" "))
        elif kind == 4:
            lines.append(rng.choice([b"/", b"//", b"/help", b"/stats", b"/reset", b"/bogus", b"/ALPHA 1"]))
        elif kind == 5:
            lines.append(b"\xe9t\xe9 " * rng.randrange(1, 4))
        elif kind == 6:
            lines.append(b"word " * rng.choice([1, 5, 200]))  # some overflow the context
        else:
            lines.append(rng.choice(["caf\u00e9", "\U0001F600", "a\tb", "<|im_end|>", "{{ x }}"]).encode())
    return [line.replace(b"\n", b" ").replace(b"\r", b" ") for line in lines] + [b"/stats"]


def fuzz_chat(count: int, models: list[str], workdir: Path, seed: int = 0) -> Counter:
    rng = random.Random(seed)
    lines = chat_lines(count, rng, workdir)
    proc = subprocess.run([sys.executable, "-m", "rast_gguf.cli.app", "chat", *models, "-n", "3", "-c", "256",
                           "-t", "1", "--temp", "0"], input=b"\n".join(lines) + b"\n", capture_output=True,
                          timeout=3600, env=dict(os.environ, NO_COLOR="1", RAST_CACHE=str(workdir / "cache")))
    out = proc.stdout.decode(errors="replace")
    tally = Counter(lines=len(lines))
    tally[f"exit {proc.returncode}"] += 1
    tally["tracebacks"] = (out + proc.stderr.decode(errors="replace")).count("Traceback")
    tally["error lines"] = out.count("error: ")
    tally["reached the end"] = int("context: " in out.rsplit(">>> ", 2)[-2] if out.count(">>> ") >= 2 else False)
    return tally


# --- config.json and safetensors headers --------------------------------------------------------------

CONFIG_KEYS = ["architectures", "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim",
               "num_hidden_layers", "intermediate_size", "vocab_size", "max_position_embeddings", "rope_theta",
               "rms_norm_eps", "rope_scaling", "hidden_act", "tie_word_embeddings", "attention_bias", "mlp_bias",
               "rope_parameters", "model_type"]
CONFIG_VALUES = WEIRD_VALUES + [2**32, float("inf"), float("nan"), ["LlamaForCausalLM"], [["LlamaForCausalLM"]],
                                {"rope_type": "llama3", "factor": "eight"}, {"rope_type": "llama3", "low_freq_factor": 0},
                                {"type": "yarn", "factor": 2.0, "original_max_position_embeddings": 2**40},
                                {"rope_type": ["linear"]}, {"type": "linear", "factor": -1}, "gelu"]


def mutate_config(config: dict, rng: random.Random) -> bytes:
    config = dict(config)
    for _ in range(rng.randrange(1, 3)):
        key = rng.choice(CONFIG_KEYS)
        if rng.random() < 0.15:
            config.pop(key, None)
        else:
            config[key] = rng.choice(CONFIG_VALUES)
    text = json.dumps(config)
    if rng.random() < 0.15:
        return mutate_text(text, rng)
    return text.encode()


def mutate_safetensors(data: bytes, rng: random.Random) -> bytes:
    (header_len,) = struct.unpack("<Q", data[:8])
    header = data[8:8 + header_len]
    body = data[8 + header_len:]
    kind = rng.randrange(6)
    if kind == 0:  # header length field
        return struct.pack("<Q", rng.choice([0, 1, header_len - 1, header_len + 1, 2**63, len(data)])) + data[8:]
    if kind == 1:  # truncation anywhere
        return data[:rng.randrange(len(data))]
    if kind == 2:  # bytes of the header JSON
        return struct.pack("<Q", header_len) + mutate_text(header.decode(), rng)[:header_len].ljust(header_len) + body
    entries = json.loads(header)
    name = rng.choice([k for k in entries if k != "__metadata__"])
    field = rng.choice(["dtype", "shape", "data_offsets"])
    entries[name] = dict(entries[name])
    entries[name][field] = rng.choice(WEIRD_VALUES + [["F32"], "I8", "BF16", [2**62, 2], [-1, 4], [0, 2**63],
                                                      [1, 2, 3], [4, 4]])
    if kind == 3:
        entries[rng.choice(["x" * 300, "\ud800", "", "__metadata__"])] = entries.pop(name)
    new_header = json.dumps(entries).encode()
    new_header += b" " * (-len(new_header) % 8)
    return struct.pack("<Q", len(new_header)) + new_header + body


def run_cli_in_process(argv: list[str]) -> tuple[int, str, bool]:
    """(exit code, stderr, traceback?) of `rast ARGV` run through rast_gguf.cli.app.main in this
    process (no process start per mutant); an exception escaping main() is what a user sees as a
    traceback."""
    from rast_gguf.cli.app import main

    err = io.StringIO()
    old_argv = sys.argv
    sys.argv = ["rast", *argv]
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            main()
    except SystemExit as e:
        return (e.code if isinstance(e.code, int) else 1), err.getvalue(), False
    except BaseException as e:  # noqa: BLE001
        return -1, f"{type(e).__name__}: {e}", True
    finally:
        sys.argv = old_argv
    return 0, err.getvalue(), False


def fuzz_convert(count: int, checkpoint: Path, workdir: Path, seed: int = 0) -> Counter:
    """`count` mutants of a valid checkpoint (half config.json, half a safetensors header), each
    through `rast convert`; tally outcomes and files left in the output folder."""
    rng = random.Random(seed)
    config = json.loads((checkpoint / "config.json").read_text())
    shards = sorted(checkpoint.glob("*.safetensors"))
    tally = Counter(mutants=count)
    examples = {}
    for i in range(count):
        model = workdir / "model"
        if model.exists():
            shutil.rmtree(model)
        shutil.copytree(checkpoint, model)
        if i % 2 == 0:
            (model / "config.json").write_bytes(mutate_config(config, rng))
        else:
            shard = model / rng.choice(shards).name
            shard.write_bytes(mutate_safetensors(shard.read_bytes(), rng))
        out_dir = workdir / "out"
        shutil.rmtree(out_dir, ignore_errors=True)
        out_dir.mkdir()
        out = out_dir / "m.gguf"
        code, err, traceback = run_cli_in_process(["convert", str(model), "-o", str(out), "--type", "f16"])
        left = sorted(p.name for p in out_dir.iterdir())
        if traceback:
            tally["tracebacks"] += 1
            examples.setdefault("traceback", err)
        elif code == 0:
            tally["converted"] += 1
            tally["files left besides the output"] += len([n for n in left if n != "m.gguf"])
        else:
            tally["refused with one line"] += int(err.count("\n") == 1 and err.startswith("error: "))
            tally["refused otherwise"] += int(not (err.count("\n") == 1 and err.startswith("error: ")))
            tally["files left after a refusal"] += len(left)
            if left:
                examples.setdefault("left", left)
    for name, example in examples.items():
        print(f"example {name}: {str(example)[:300]}", file=sys.stderr)
    return tally


def tiny_checkpoint(workdir: Path) -> Path:
    from hf_fixtures import Case, write_checkpoint

    return write_checkpoint(workdir / "ckpt", Case(arch="llama", dtype="f32", shards=2, seed=30)).path


def main() -> None:
    import rast_gguf  # noqa: F401
    from conftest import make_triple

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jsonl", type=int, default=2000)
    parser.add_argument("--chat", type=int, default=500)
    parser.add_argument("--convert", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "triple").mkdir()
        triple = make_triple(tmp / "triple")
        models = ["-m", str(triple.large), "--base", str(triple.base), "--tuned", str(triple.tuned)]
        if args.jsonl:
            print("jsonl:", dict(fuzz_jsonl(args.jsonl, models, tmp, args.seed)), flush=True)
        if args.chat:
            (tmp / "chat").mkdir()
            print("chat:", dict(fuzz_chat(args.chat, models, tmp / "chat", args.seed)), flush=True)
        if args.convert:
            (tmp / "convert").mkdir()
            checkpoint = tiny_checkpoint(tmp)
            print("convert:", dict(fuzz_convert(args.convert, checkpoint, tmp / "convert", args.seed)), flush=True)


if __name__ == "__main__":
    main()
