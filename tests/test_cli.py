"""`rast generate` and `rast check` end to end, as a user runs them."""

import llama_cpp  # noqa: F401

import subprocess
import sys

from rast_gguf import DeltaPair, RastEngine, SamplingParams, generate


def rast_cli(*args):
    return subprocess.run([sys.executable, "-m", "rast_gguf.cli.app", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def test_generate_prints_only_the_completion(triple):
    prompt = "Question: 3 + 4 = ?\nAnswer:"
    proc = rast_cli("generate", "-p", prompt, "-m", triple.large, "--base", triple.base, "--tuned", triple.tuned,
                    "--alpha", "0.5", "-n", "24", "--temp", "0", "-c", "256", "-t", "2")
    assert proc.returncode == 0, proc.stderr
    with RastEngine(triple.large, [DeltaPair(str(triple.tuned), str(triple.base), 0.5)], n_ctx=256,
                    n_threads=2) as engine:
        expected = generate(engine, prompt, max_tokens=24, sampling=SamplingParams(temp=0)).text
    assert proc.stdout == expected + "\n"
    assert "tokens/s" in proc.stderr and prompt not in proc.stdout


def test_generate_stop_string_cuts_output(triple):
    args = ["generate", "-p", "Once upon a time", "-m", triple.large, "--base", triple.base, "--tuned",
            triple.tuned, "-n", "40", "--temp", "0", "-c", "256"]
    full = rast_cli(*args).stdout.rstrip("\n")
    assert len(full) > 6
    stop = full[3:6]
    cut = rast_cli(*args, "--stop", stop)
    assert cut.returncode == 0
    assert cut.stdout.rstrip("\n") == full[:full.index(stop)]
    assert "finish: stop" in cut.stderr


def test_check_reports_compatible_triple(triple):
    proc = rast_cli("check", "-m", triple.large, "--base", triple.base, "--tuned", triple.tuned)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for needle in ("large", "base", "tuned", "qwen2", "F32", "640", "verdict: compatible", "shared vocabulary: 640"):
        assert needle in out, out


def test_check_reports_incompatible_triple(triple, llama_triple):
    proc = rast_cli("check", "-m", triple.large, "--base", llama_triple.base, "--tuned", llama_triple.tuned)
    assert proc.returncode == 1
    assert "NOT compatible" in proc.stdout and "problem:" in proc.stdout


def test_several_pairs_sum_their_deltas(triple, padded_triple):
    """Two pairs with alphas a, b equal one pair... checked against the oracle sum in numpy."""
    import numpy as np
    from oracle import AloneModel, combine, log_softmax, unused_ids

    t = triple
    pairs = [DeltaPair(str(t.tuned), str(t.base), 0.7), DeltaPair(str(t.base), str(t.tuned), 0.2)]
    prompt = "Question: 5 + 8 = ?"
    with RastEngine(t.large, pairs, n_ctx=128, n_threads=2, flash_attn="off") as engine:
        prompt_tokens = engine.tokenize(prompt)
        result = generate(engine, prompt, max_tokens=8, record_logits=True,
                          sampling=SamplingParams(temp=1.0, seed=9, top_k=0, top_p=1.0, min_p=0.0))
        n_shared = engine.n_shared
    models = [AloneModel(p, n_ctx=128) for p in (t.large, t.tuned, t.base)]
    try:
        z = [m.start(prompt_tokens) for m in models]
        for step, token in enumerate(result.tokens):
            want = log_softmax(combine(z[0], [(0.7, z[1], z[2]), (0.2, z[2], z[1])], n_shared, unused_ids(t.large)))
            got = log_softmax(result.step_logits[step])
            finite = np.isfinite(want)
            assert np.max(np.abs(got[finite] - want[finite])) <= 1e-4
            z = [m.step(token) for m in models]
    finally:
        for m in models:
            m.close()


def test_chat_without_models_uses_the_toy_triple_in_raw_mode():
    proc = subprocess.run([sys.executable, "-m", "rast_gguf.cli.app", "chat", "-n", "16", "-t", "1", "--temp", "0"],
                          input="Question: 12 + 345 + 67 + 890 = ?\n/stats\n", capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--raw mode" in proc.stderr and "Traceback" not in proc.stderr
    assert "toy-large.gguf" in proc.stdout
    assert "generated" in proc.stdout and "tokens/s" in proc.stdout  # /stats after one answered turn
