"""`rast eval` / rast_gguf.evaluate and `rast analyze` on the shipped toy triple: outputs, resuming,
pass@k bookkeeping, dataset errors, and the analysis' change rate against an independent recount."""

import llama_cpp  # noqa: F401

import json
import subprocess
import sys

import numpy as np
import pytest

from rast_gguf.demo import TEMPLATE, ToyTriple, toy_configs, toy_grader, toy_problems
from rast_gguf.errors import DatasetError
from rast_gguf.evaluate import evaluate, load_dataset, write_report
from rast_gguf.passk import pass_at_k
from rast_gguf.sampling import SamplingParams

SAMPLED = SamplingParams(temp=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=7)


def run_eval(configs, problems, out_dir, n=4):
    return evaluate(configs, problems, out_dir, template=TEMPLATE, n=n, sampling=SAMPLED, max_tokens=96,
                    n_parallel=16, n_ctx=256, n_threads=1, progress=False, grader=toy_grader, dataset_name="toy")


@pytest.fixture(scope="module")
def toy():
    return ToyTriple.shipped()


def test_sampled_eval_report_resume_and_passk(toy, tmp_path):
    configs = [c for c in toy_configs(toy, [1.0]) if c.name in ("large base", "large + RAST a=1")]
    problems = toy_problems(12)
    report = run_eval(configs, problems, tmp_path)
    written = write_report(report, tmp_path)
    assert {p.name for p in written} == {"results.json", "results.md", "results.png"}
    saved = json.loads((tmp_path / "results.json").read_text())
    for result, row in zip(report.results, saved["results"]):
        # pass@k recomputed here from the saved per-problem counts, and accuracy from the sample texts
        assert row["pass_at_k"]["4"] == pytest.approx(np.mean([pass_at_k(4, c, 4) for c in row["correct_per_problem"]]))
        regraded = [sum(toy_grader(t, p.answer) for t in texts) for p, texts in zip(problems, result.texts)]
        assert regraded == row["correct_per_problem"]
        assert row["accuracy"] == pytest.approx(sum(regraded) / (4 * len(problems)))
    assert "| large + RAST a=1 |" in (tmp_path / "results.md").read_text()

    # resume: cut the RAST samples file in half; a rerun decodes only the missing records, same results
    samples = tmp_path / "samples" / f"{configs[1].slug}.jsonl"
    lines = samples.read_text().splitlines(keepends=True)
    samples.write_text("".join(lines[:6]) + lines[6][:10])  # and a torn last line
    again = run_eval(configs, problems, tmp_path)
    assert [r.correct for r in again.results] == [r.correct for r in report.results]
    assert len(samples.read_text().splitlines()) == len(problems)


def test_cli_eval_on_a_jsonl_dataset(toy, tmp_path):
    data = tmp_path / "sums.jsonl"
    data.write_text("".join(json.dumps({"id": f"p{i}", "question": p.question, "answer": p.answer}) + "\n"
                            for i, p in enumerate(toy_problems(8))))
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "rast_gguf.cli.app", "eval", str(data), "-o", str(out),
                           "-m", str(toy.large), "--base", str(toy.small_base), "--tuned", str(toy.small_tuned),
                           "--alpha", "1", "--no-small", "--template", "Q: {question}\n", "-n", "96", "-c", "256",
                           "-t", "1", "--no-progress"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads((out / "results.json").read_text())["results"]
    assert [r["name"] for r in rows] == ["large", "rast a=1"]
    # the default grader (last number of the completion) on the toy's worked answers
    assert rows[1]["accuracy"] >= 0.75 and rows[1]["accuracy"] > rows[0]["accuracy"]
    assert "| rast a=1 |" in proc.stdout


@pytest.mark.parametrize("content,message", [
    (None, "no such dataset file"),
    ('{"question": "1+1", "answer": "2"}\nnot json\n', ":2: not valid JSON"),
    ('{"question": "1+1"}\n', ":1: needs the fields 'question' and 'answer'"),
    ('{"id": 1, "question": "a", "answer": "1"}\n{"id": 1, "question": "b", "answer": "2"}\n', ":2: id '1' appears twice"),
    ("\n", "holds no problems"),
])
def test_dataset_errors(tmp_path, content, message):
    path = tmp_path / "data.jsonl"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DatasetError, match=message.replace("(", r"\(")):
        load_dataset(path)


def test_cli_eval_bad_dataset_is_one_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"q": 1}\n')
    proc = subprocess.run([sys.executable, "-m", "rast_gguf.cli.app", "eval", str(path), "-o", str(tmp_path / "o"),
                           "-m", "x.gguf"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"error: {path}:1: needs the fields 'question' and 'answer' (see --question-key / --answer-key)"]


def test_analysis_change_rate_matches_an_independent_recount(toy, tmp_path):
    """The analysis counts steps where RAST's token is not the large model's top token; recount them
    with llama-cpp-python's own Llama on the large model alone, over the RAST paths the eval wrote."""
    from rast_gguf.analyze import analyze

    problems = toy_problems(6)
    prompts = [TEMPLATE.format(question=p.question) for p in problems]
    analysis = analyze(str(toy.large), str(toy.small_base), str(toy.small_tuned), prompts, max_tokens=96,
                       large_rl=str(toy.large_rl), n_ctx=256, n_threads=1)
    rast = [c for c in toy_configs(toy, [1.0]) if c.name == "large + RAST a=1"]
    report = evaluate(rast, problems, tmp_path, template=TEMPLATE, max_tokens=96, n_parallel=8, n_ctx=256,
                      n_threads=1, progress=False, grader=toy_grader)
    llm = llama_cpp.Llama(str(toy.large), n_ctx=256, logits_all=True, verbose=False, n_threads=1)
    steps = changed = 0
    try:
        for prompt, texts in zip(prompts, report.results[0].texts):
            prompt_ids = llm.tokenize(prompt.encode(), add_bos=False, special=False)
            path = llm.tokenize(texts[0].encode(), add_bos=False, special=False) + [llm.token_eos()]
            llm.reset()
            llm.eval(prompt_ids + path[:-1])
            tops = np.asarray(llm.scores[len(prompt_ids) - 1:len(prompt_ids) + len(path) - 1]).argmax(-1)
            steps += len(path)
            changed += int(sum(int(t) != p for t, p in zip(tops, path)))
    finally:
        llm.close()
    assert (analysis.n_steps, analysis.n_changed) == (steps, changed)
    assert changed >= len(problems)  # at least the style token of every problem
    assert analysis.promoted[0][0] == "Steps" and analysis.displaced[0][0] == "Answer"
    assert analysis.pcr_rl is not None and 0.9 < analysis.pcr_rl < 1.0
