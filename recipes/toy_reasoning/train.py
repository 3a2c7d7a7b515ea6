"""Retrain the shipped toy triple from a seed: `python -m recipes.toy_reasoning.train --seed 0 --out DIR`.

Phases: the tokenizer; a pretraining corpus of sum problems with mixed solution styles (see
rast_gguf/toy_task.py); a small and a large base model pretrained on it (loss on the solution
tokens); REINFORCE with a per-prompt group baseline (GRPO without the std scaling, no KL) and a
correctness reward on each base, giving the small tuned model and the large RL reference; an
evaluation on held-out problems of every configuration the paper compares, decoded in PyTorch the
way llama.cpp decodes later (greedy, and temperature-1 samples for pass@k); and the four models in
Hugging Face format under DIR/{small_base,small_rl,large_base,large_rl} plus DIR/results.json.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import math
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from recipes.toy_reasoning.model import Llama, ModelShape, save_hf, shape_dict
from recipes.toy_reasoning.tokenizer import EOS, build_tokenizer, save_tokenizer


def _load_package_module(name: str):
    """rast_gguf/<name>.py by path: the package's __init__ loads llama.cpp, which training does not need."""
    path = Path(__file__).resolve().parents[2] / "rast_gguf" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_rast_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


task = _load_package_module("toy_task")
passk = _load_package_module("passk")

SHAPES = {
    "small": ModelShape(n_embd=128, n_layer=6, n_head=2, n_head_kv=2, n_ff=512),
    "large": ModelShape(n_embd=320, n_layer=8, n_head=5, n_head_kv=5, n_ff=896),
    "tiny": ModelShape(n_embd=32, n_layer=1, n_head=1, n_head_kv=1, n_ff=64),  # smoke tests only
}
ALPHAS = (0.5, 1.0, 1.5, 2.0)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Codec:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.eos = tokenizer.token_to_id(EOS)

    def encode(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(texts)]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)


# --- pretraining ------------------------------------------------------------------------------

def build_corpus(codec: Codec, seed: int, n: int, device):
    """(ids, loss_mask) right-padded tensors of prompt + solution + EOS; loss on solution and EOS."""
    rng = random.Random(f"corpus-{seed}")
    probs = task.problems(seed, n, held_out=False)
    prompts = codec.encode([p.prompt for p in probs])
    solutions = codec.encode([task.corpus_solution(p, rng) for p in probs])
    length = max(len(a) + len(b) + 1 for a, b in zip(prompts, solutions))
    ids = torch.full((n, length), codec.eos, dtype=torch.long)
    mask = torch.zeros((n, length), dtype=torch.bool)
    for i, (a, b) in enumerate(zip(prompts, solutions)):
        row = a + b + [codec.eos]
        ids[i, :len(row)] = torch.tensor(row)
        mask[i, len(a):len(row)] = True
    return ids.to(device), mask.to(device)


def pretrain(shape: ModelShape, corpus, *, steps: int, batch: int, lr: float, seed: int, device, name: str):
    torch.manual_seed(seed)
    model = Llama(shape).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"{name}: {n_params / 1e6:.2f} M parameters, {steps} steps of {batch}")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.1)
    ids, mask = corpus
    gen = torch.Generator(device="cpu").manual_seed(seed)
    warmup = max(1, steps // 20)
    for step in range(steps):
        scale = min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        for group in opt.param_groups:
            group["lr"] = lr * scale
        rows = torch.randint(0, ids.shape[0], (batch,), generator=gen).to(device)
        x, m = ids[rows], mask[rows]
        width = int(m.any(0).nonzero().max()) + 1
        x, m = x[:, :width], m[:, :width]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(x[:, :-1])
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="none")
        loss = (loss * m[:, 1:].reshape(-1)).sum() / m[:, 1:].sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % max(1, steps // 10) == 0 or step == steps - 1:
            log(f"{name} step {step} loss {loss.item():.4f}")
    return model, n_params


# --- decoding ---------------------------------------------------------------------------------

@torch.no_grad()
def decode(mix, prompts: list[list[int]], codec: Codec, *, temperature: float, max_new: int, device,
           generator=None) -> list[list[int]]:
    """Completions (ids, EOS excluded) of `prompts` under logits sum(c * model(x)) for (model, c) in mix.

    temperature 0 is greedy; no KV cache (every step reruns the batch, cheap at these sizes).
    """
    b, width = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((b, width), codec.eos, dtype=torch.long)
    pad = torch.zeros((b, width), dtype=torch.bool)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        pad[i, width - len(p):] = True
    ids, pad = ids.to(device), pad.to(device)
    done = torch.zeros(b, dtype=torch.bool, device=device)
    out = []
    for _ in range(max_new):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = sum(c * model(ids, pad)[:, -1].float() for model, c in mix)
        if temperature == 0:
            token = logits.argmax(-1)
        else:
            token = torch.multinomial(F.softmax(logits / temperature, -1), 1, generator=generator).squeeze(-1)
        token = torch.where(done, torch.full_like(token, codec.eos), token)
        out.append(token)
        done |= token == codec.eos
        ids = torch.cat([ids, token[:, None]], 1)
        pad = torch.cat([pad, torch.ones_like(done)[:, None]], 1)
        if bool(done.all()):
            break
    rows = torch.stack(out, 1).tolist()
    return [r[:r.index(codec.eos)] if codec.eos in r else r for r in rows]


def batched_decode(mix, prompts, codec, *, temperature, max_new, device, generator=None, chunk=2048):
    out = []
    for start in range(0, len(prompts), chunk):
        out += decode(mix, prompts[start:start + chunk], codec, temperature=temperature, max_new=max_new,
                      device=device, generator=generator)
    return out


# --- RL -------------------------------------------------------------------------------------

def rl(base: Llama, codec: Codec, *, steps: int, prompts_per_step: int, group: int, lr: float, seed: int,
       max_new: int, device, name: str, time_limit: float):
    """REINFORCE with a group-mean baseline on the correctness reward; returns the tuned copy and a log."""
    model = copy.deepcopy(base)
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.99))
    rng = random.Random(f"rl-{seed}")
    pool = task.problems(seed + 1000, 50_000, held_out=False)
    gen = torch.Generator(device=device).manual_seed(seed)
    history, start = [], time.time()
    for step in range(steps):
        batch = [pool[rng.randrange(len(pool))] for _ in range(prompts_per_step)]
        prompt_ids = codec.encode([p.prompt for p in batch])
        prompt_ids = [p for p in prompt_ids for _ in range(group)]
        model.eval()
        completions = decode([(model, 1.0)], prompt_ids, codec, temperature=1.0, max_new=max_new,
                             device=device, generator=gen)
        model.train()
        texts = [codec.decode(c) for c in completions]
        problems_rep = [p for p in batch for _ in range(group)]
        reward = torch.tensor([float(task.is_correct(p, t)) for p, t in zip(problems_rep, texts)], device=device)
        advantage = reward - reward.view(-1, group).mean(1, keepdim=True).expand(-1, group).reshape(-1)
        # full sequences: left-padded prompt, completion, EOS (when it ended), right padding
        width_p = max(len(p) for p in prompt_ids)
        width_c = max(len(c) for c in completions) + 1
        ids = torch.full((len(texts), width_p + width_c), codec.eos, dtype=torch.long)
        pad = torch.zeros_like(ids, dtype=torch.bool)
        scored = torch.zeros_like(ids, dtype=torch.bool)
        for i, (p, c) in enumerate(zip(prompt_ids, completions)):
            ended = len(c) < max_new
            tail = c + ([codec.eos] if ended else [])
            ids[i, width_p - len(p):width_p] = torch.tensor(p)
            ids[i, width_p:width_p + len(tail)] = torch.tensor(tail, dtype=torch.long)
            pad[i, width_p - len(p):width_p + len(tail)] = True
            scored[i, width_p:width_p + len(tail)] = True
        ids, pad, scored = ids.to(device), pad.to(device), scored.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(ids[:, :-1], pad[:, :-1])
        logp = -F.cross_entropy(logits.float().transpose(1, 2), ids[:, 1:], reduction="none")
        seq_logp = (logp * scored[:, 1:]).sum(1)
        loss = -(advantage * seq_logp).sum() / (len(texts) * max_new / 4)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        styles = [task.style(t) for t in texts]
        record = {"step": step, "reward": reward.mean().item(), "worked": styles.count("worked") / len(styles)}
        history.append(record)
        if step % 10 == 0 or step == steps - 1:
            log(f"{name} RL step {step}: reward {record['reward']:.3f} worked {record['worked']:.3f}")
        if time.time() - start > time_limit:
            log(f"{name} RL stopped at step {step} (time limit {time_limit:.0f} s)")
            break
    model.eval()
    return model, history


# --- evaluation -------------------------------------------------------------------------------

def evaluate(models: dict[str, Llama], codec: Codec, *, n_greedy: int, n_sampled: int, samples: int, seed: int,
             max_new: int, device, deadline: float = math.inf, on_result=None) -> dict:
    held_out = task.problems(seed, max(n_greedy, n_sampled), held_out=True)
    configs = {
        "small base": [(models["small_base"], 1.0)],
        "small RL": [(models["small_rl"], 1.0)],
        "large base": [(models["large_base"], 1.0)],
        **{f"large + RAST a={a:g}": [(models["large_base"], 1.0), (models["small_rl"], a),
                                     (models["small_base"], -a)] for a in ALPHAS},
        "large RL": [(models["large_rl"], 1.0)],
    }
    gen = torch.Generator(device=device).manual_seed(seed)
    results: dict[str, dict] = {name: {} for name in configs}
    summary = {"n_greedy": n_greedy, "n_sampled": n_sampled, "samples": samples, "configs": results}
    for name, mix in configs.items():
        t0 = time.time()
        probs = held_out[:n_greedy]
        texts = [codec.decode(c) for c in batched_decode(
            mix, codec.encode([p.prompt for p in probs]), codec, temperature=0.0, max_new=max_new, device=device)]
        results[name]["greedy_accuracy"] = sum(task.is_correct(p, t) for p, t in zip(probs, texts)) / len(probs)
        results[name]["greedy_worked_share"] = sum(task.style(t) == "worked" for t in texts) / len(texts)
        results[name]["greedy_example"] = texts[0]
        log(f"eval {name}: greedy {results[name]['greedy_accuracy']:.3f} "
            f"(worked {results[name]['greedy_worked_share']:.2f}) ({time.time() - t0:.1f} s)")
        if on_result:
            on_result(summary)
    ks = [k for k in (1, 2, 4, 8, 16, 32) if k <= samples]
    for name, mix in configs.items():
        if time.time() > deadline:
            log(f"eval: deadline reached, no sampled runs for {name}")
            continue
        t0 = time.time()
        probs = held_out[:n_sampled]
        prompts = [ids for ids in codec.encode([p.prompt for p in probs]) for _ in range(samples)]
        texts = [codec.decode(c) for c in batched_decode(mix, prompts, codec, temperature=1.0, max_new=max_new,
                                                         device=device, generator=gen)]
        correct = [sum(task.is_correct(p, texts[i * samples + j]) for j in range(samples)) for i, p in enumerate(probs)]
        results[name]["sampled_worked_share"] = sum(task.style(t) == "worked" for t in texts) / len(texts)
        results[name]["pass_at_k"] = {k: sum(passk.pass_at_k(samples, c, k) for c in correct) / len(correct) for k in ks}
        log(f"eval {name}: pass@k {json.dumps(results[name]['pass_at_k'])} worked "
            f"{results[name]['sampled_worked_share']:.2f} ({time.time() - t0:.1f} s)")
        if on_result:
            on_result(summary)
    return summary


def pack(out: Path, dest: Path, piece: int = 15 << 20) -> None:
    """DIR/{small,large}_{base,rl} and the tokenizer as checkpoints.tar.00, .01, ... (cat them to untar)."""
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name in ("tokenizer", "small_base", "small_rl", "large_base", "large_rl"):
            tar.add(out / name, arcname=name)
    data = buffer.getvalue()
    dest.mkdir(parents=True, exist_ok=True)
    for i in range(0, len(data), piece):
        (dest / f"checkpoints.tar.{i // piece:02d}").write_bytes(data[i:i + piece])
    log(f"packed {len(data) / 1e6:.1f} MB into {dest}")


# --- the command ------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--corpus", type=int, default=300_000, help="pretraining problems")
    ap.add_argument("--small-steps", type=int, default=2500)
    ap.add_argument("--large-steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--rl-steps", type=int, default=80)
    ap.add_argument("--rl-prompts", type=int, default=64)
    ap.add_argument("--rl-group", type=int, default=8)
    ap.add_argument("--rl-lr", type=float, default=1e-4)
    ap.add_argument("--rl-time", type=float, default=80.0,
                    help="seconds at most per RL run (inf: always --rl-steps)")
    ap.add_argument("--eval-greedy", type=int, default=1000)
    ap.add_argument("--eval-sampled", type=int, default=500)
    ap.add_argument("--eval-samples", type=int, default=8)
    ap.add_argument("--max-new", type=int, default=96)
    ap.add_argument("--shapes", default="small,large", help="SHAPES names for the small and large model")
    ap.add_argument("--deadline", type=float, default=math.inf, help="seconds after which evaluation stops sampling")
    ap.add_argument("--pack", type=Path, help="also write the four checkpoints as a tar split in <= 15 MB pieces here")
    ap.add_argument("--export-to", type=Path, help="also convert the four checkpoints to GGUF here when done "
                    "(rast_gguf/data ships them), with the project's converter")
    args = ap.parse_args(argv)

    t_start = time.time()
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    tok_dir = args.out / "tokenizer"
    tok_dir.mkdir(exist_ok=True)
    special = save_tokenizer(tokenizer, tok_dir)
    codec = Codec(tokenizer)
    n_vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    small_name, large_name = args.shapes.split(",")
    shapes = {"small": ModelShape(**{**shape_dict(SHAPES[small_name]), "n_vocab": n_vocab}),
              "large": ModelShape(**{**shape_dict(SHAPES[large_name]), "n_vocab": n_vocab})}
    log(f"device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}), torch "
        f"{torch.__version__}, vocab {n_vocab}")

    corpus = build_corpus(codec, args.seed, args.corpus, device)
    log(f"corpus: {corpus[0].shape[0]} sequences of <= {corpus[0].shape[1]} tokens")
    timings, models, sizes = {}, {}, {}
    for size, steps, lr in (("small", args.small_steps, 2e-3), ("large", args.large_steps, 1e-3)):
        t0 = time.time()
        models[f"{size}_base"], sizes[size] = pretrain(shapes[size], corpus, steps=steps, batch=args.batch, lr=lr,
                                                       seed=args.seed, device=device, name=f"{size} base")
        models[f"{size}_base"].eval()
        timings[f"pretrain {size}"] = time.time() - t0
        save_hf(models[f"{size}_base"], args.out / f"{size}_base", special, tok_dir)
    del corpus
    histories = {}
    for size in ("small", "large"):
        t0 = time.time()
        models[f"{size}_rl"], histories[size] = rl(
            models[f"{size}_base"], codec, steps=args.rl_steps, prompts_per_step=args.rl_prompts,
            group=args.rl_group, lr=args.rl_lr, seed=args.seed, max_new=args.max_new, device=device,
            name=size, time_limit=args.rl_time)
        timings[f"rl {size}"] = time.time() - t0
        save_hf(models[f"{size}_rl"], args.out / f"{size}_rl", special, tok_dir)
    if args.pack:
        pack(args.out, args.pack)
    meta = {"seed": args.seed, "device": str(device), "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
            "parameters": sizes, "shapes": {k: shape_dict(v) for k, v in shapes.items()},
            "timings_s": timings, "rl_history": histories, "args": {k: str(v) for k, v in vars(args).items()}}

    def write_results(summary: dict) -> None:
        text = json.dumps({**summary, **meta}, indent=2)
        for directory in filter(None, (args.out, args.pack)):
            (directory / "results.json").write_text(text)

    t0 = time.time()
    evaluate(models, codec, n_greedy=args.eval_greedy, n_sampled=args.eval_sampled, samples=args.eval_samples,
             seed=args.seed, max_new=args.max_new, device=device, deadline=t_start + args.deadline,
             on_result=write_results)
    timings["eval"] = time.time() - t0
    if args.export_to:
        from recipes.toy_reasoning.export import export

        for path in export(args.out, args.export_to):
            log(f"exported {path} ({path.stat().st_size / 1e6:.1f} MB)")
    timings["total"] = time.time() - t_start
    log(f"done in {timings['total']:.0f} s: {json.dumps(timings)}")


if __name__ == "__main__":
    main()
