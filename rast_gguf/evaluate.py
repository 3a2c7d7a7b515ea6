"""Accuracy and pass@k of several decoding configurations on one dataset, side by side.

A dataset is a JSONL file of problems (`question` and `answer` fields by default, an optional
`id`), turned into prompts by a template with a `{question}` slot. A configuration is a model that
leads (the large base, or a small model alone) and optionally one (tuned, base) pair with its
alpha: "large", "tuned", "rast a=1", ... `evaluate` decodes n samples per problem for every
configuration through `rast_gguf.batch` (parallel sequences, seeded per record and sample, and
resumable: each configuration's samples go to OUT/samples/<name>.jsonl, and a rerun decodes only
what is missing there), grades each sample with `rast_gguf.grading` against the reference answer,
and reports the mean accuracy (pass@1 over the n samples) and pass@k with the unbiased estimator.
`write_report` writes OUT/results.json, OUT/results.md and, with matplotlib, OUT/results.png.
Configurations that share a model set (RAST at several alphas) share one engine.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rast_gguf.errors import DatasetError, UsageError
from rast_gguf.passk import ks_for, mean_pass_at_k
from rast_gguf.report_files import write_result_files
from rast_gguf.sampling import DeltaPair, SamplingParams

PAPER_TEMPLATE = "Question:\n{question}\nAnswer:\nLet's think step by step.\n"


@dataclass(frozen=True)
class EvalProblem:
    id: str
    question: str
    answer: str


@dataclass(frozen=True)
class EvalConfig:
    name: str
    lead: str                                # GGUF whose logits lead
    pair: tuple[str, str] | None = None      # (tuned, base) GGUFs of the delta
    alpha: float = 0.0

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9.=_-]+", "_", self.name)


@dataclass
class ConfigResult:
    name: str
    alpha: float | None
    n_problems: int
    n_samples: int
    correct: list[int]                       # correct samples per problem
    accuracy: float                          # mean share of correct samples (pass@1)
    pass_at_k: dict[int, float]
    tokens: int = 0                          # generated tokens, all samples
    texts: list[list[str]] = field(default_factory=list, repr=False)


@dataclass
class EvalReport:
    dataset: str
    template: str
    n_samples: int
    sampling: dict
    results: list[ConfigResult]

    def by_name(self, name: str) -> ConfigResult:
        return next(r for r in self.results if r.name == name)


def load_dataset(path: str | os.PathLike, *, question_key: str = "question", answer_key: str = "answer",
                 limit: int | None = None) -> list[EvalProblem]:
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such dataset file; give a JSONL file with one problem per line")
    problems, ids = [], set()
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw.decode("utf-8"))
                json.dumps(obj, ensure_ascii=False).encode("utf-8")  # no lone surrogates ("\ud800")
            except json.JSONDecodeError as e:
                raise DatasetError(f"{path}:{line_no}: not valid JSON ({e.msg}); fix the line") from None
            except (UnicodeError, ValueError, RecursionError) as e:
                why = "nested too deeply" if isinstance(e, RecursionError) else " ".join(str(e).split())[:80]
                raise DatasetError(f"{path}:{line_no}: not valid UTF-8 JSON text ({why}); fix the line") from None
            if not isinstance(obj, dict) or question_key not in obj or answer_key not in obj:
                raise DatasetError(f"{path}:{line_no}: needs the fields {question_key!r} and {answer_key!r} "
                                   "(see --question-key / --answer-key)")
            problem_id = str(obj.get("id", line_no))
            if problem_id in ids:
                raise DatasetError(f"{path}:{line_no}: id {problem_id!r} appears twice; ids must be unique")
            ids.add(problem_id)
            problems.append(EvalProblem(problem_id, str(obj[question_key]), str(obj[answer_key])))
            if limit is not None and len(problems) >= limit:
                break
    if not problems:
        raise DatasetError(f"{path}: holds no problems")
    return problems


def standard_configs(large: str, base: str | None, tuned: str | None, alphas: Sequence[float], *,
                     large_rl: str | None = None, small_alone: bool = True) -> list[EvalConfig]:
    """large alone, (small base and small tuned alone), large + RAST at each alpha, (large RL)."""
    configs = [EvalConfig("large", str(large))]
    if base and tuned:
        if small_alone:
            configs += [EvalConfig("small base", str(base)), EvalConfig("small tuned", str(tuned))]
        configs += [EvalConfig(f"rast a={a:g}", str(large), (str(tuned), str(base)), float(a)) for a in alphas]
    if large_rl:
        configs.append(EvalConfig("large RL", str(large_rl)))
    return configs


def _records(problems: Sequence[EvalProblem], config: EvalConfig, template: str, n: int,
             sampling: SamplingParams, max_tokens: int, stop: Sequence[str]):
    from rast_gguf.jsonl import BatchRecord

    alpha = config.alpha if config.pair else None
    return [BatchRecord(line=i + 1, id=p.id, prompt=template.format(question=p.question), messages=None,
                        sampling=sampling, max_tokens=max_tokens, n=n, stop=tuple(stop), alpha=alpha,
                        fields={"id": p.id}) for i, p in enumerate(problems)]


def _read_texts(path: Path) -> dict[str, tuple[list[str], int]]:
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                obj = json.loads(line)
                texts = obj["text"] if isinstance(obj["text"], list) else [obj["text"]]
                tokens = obj["n_tokens"] if isinstance(obj["n_tokens"], list) else [obj["n_tokens"]]
                out[str(obj["id"])] = (texts, sum(tokens))
    return out


def evaluate(configs: Sequence[EvalConfig], problems: Sequence[EvalProblem], out_dir: str | os.PathLike, *,
             template: str = "{question}", n: int = 1, sampling: SamplingParams | None = None,
             max_tokens: int = 512, stop: Sequence[str] = (), n_parallel: int = 8, n_ctx: int = 2048,
             n_threads: int | None = None, n_gpu_layers: int = 0, flash_attn: str = "auto", progress: bool = True,
             grader: Callable[[str, str], bool] | None = None, dataset_name: str = "",
             on_config: Callable[[ConfigResult], None] | None = None, overwrite: bool = False,
             placement: dict | None = None) -> EvalReport:
    """Decode, grade and score every configuration (see the module docstring). The run folder is
    locked while it runs; `overwrite` discards samples made with other settings instead of refusing.
    `placement`: RastEngine's rpc / rpc_small / tensor_split for every engine (rpc: the leading model;
    rpc_small: the pair)."""
    from rast_gguf.batch import run_batch
    from rast_gguf.engine import RastEngine
    from rast_gguf.grading import grade
    from rast_gguf.results_file import lock_folder

    if "{question}" not in template:
        raise UsageError("the prompt template needs a {question} slot")
    if n < 1:
        raise UsageError(f"--samples must be >= 1, got {n}")
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        raise UsageError(f"configuration names must differ, got {names}")
    sampling = sampling or SamplingParams(temp=0.0, seed=0)
    grader = grader or grade
    out_dir = Path(out_dir)
    (out_dir / "samples").mkdir(parents=True, exist_ok=True)
    with lock_folder(out_dir):  # one run per folder at a time
        results: dict[str, ConfigResult] = {}
        groups: dict[tuple, list[EvalConfig]] = {}
        for config in configs:
            groups.setdefault((config.lead, config.pair), []).append(config)
        for (lead, pair), group in groups.items():
            pairs = [DeltaPair(pair[0], pair[1], group[0].alpha, n_gpu_layers)] if pair else []
            with RastEngine(lead, pairs, n_ctx=n_ctx, n_threads=n_threads, n_gpu_layers=n_gpu_layers,
                            flash_attn=flash_attn, n_seq_max=n_parallel, **(placement or {})) as engine:
                for config in group:
                    out_path = out_dir / "samples" / f"{config.slug}.jsonl"
                    if progress:
                        print(f"{config.name}:", file=sys.stderr)
                    run_batch(engine, _records(problems, config, template, n, sampling, max_tokens, stop), out_path,
                              progress=progress, overwrite=overwrite)
                    results[config.name] = score(config, problems, _read_texts(out_path), n, grader)
                    if on_config:
                        on_config(results[config.name])
    report = EvalReport(dataset_name, template, n, asdict(sampling), [results[c.name] for c in configs])
    return report


def score(config: EvalConfig, problems: Sequence[EvalProblem], texts: dict[str, tuple[list[str], int]], n: int,
          grader: Callable[[str, str], bool]) -> ConfigResult:
    missing = [p.id for p in problems if p.id not in texts]
    if missing:
        raise DatasetError(f"{config.name}: no samples for {len(missing)} problems (first: {missing[0]}); "
                           "their prompts could not run, see the messages above")
    correct, all_texts, tokens = [], [], 0
    for p in problems:
        samples, n_tokens = texts[p.id]
        correct.append(sum(bool(grader(t, p.answer)) for t in samples))
        all_texts.append(samples)
        tokens += n_tokens
    return ConfigResult(config.name, config.alpha if config.pair else None, len(problems), n, correct,
                        accuracy=sum(correct) / (n * len(problems)),
                        pass_at_k={k: mean_pass_at_k(correct, n, k) for k in ks_for(n)},
                        tokens=tokens, texts=all_texts)


def markdown_table(report: EvalReport) -> str:
    ks = ks_for(report.n_samples)
    k_cols = [k for k in ks if k > 1]
    head = "| configuration | accuracy |" + "".join(f" pass@{k} |" for k in k_cols)
    rule = "|---|---:|" + "---:|" * len(k_cols)
    rows = [f"| {r.name} | {100 * r.accuracy:.1f} |" + "".join(f" {100 * r.pass_at_k[k]:.1f} |" for k in k_cols)
            for r in report.results]
    return "\n".join([head, rule, *rows])


def report_dict(report: EvalReport) -> dict:
    return {
        "dataset": report.dataset, "template": report.template, "n_samples": report.n_samples,
        "sampling": report.sampling,
        "results": [{"name": r.name, "alpha": r.alpha, "n_problems": r.n_problems, "accuracy": r.accuracy,
                     "pass_at_k": {str(k): v for k, v in r.pass_at_k.items()}, "generated_tokens": r.tokens,
                     "correct_per_problem": r.correct} for r in report.results],
    }


def plot_report(report: EvalReport, path: Path) -> Path | None:
    """Accuracy bars and pass@k curves as a PNG; None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    curves = report.n_samples > 1
    fig, axes = plt.subplots(1, 2 if curves else 1, figsize=(11 if curves else 6, 4), squeeze=False)
    axes = axes[0]
    names = [r.name for r in report.results]
    axes[0].barh(names[::-1], [100 * r.accuracy for r in report.results][::-1], color="#4c72b0")
    axes[0].set_xlabel("accuracy (%)" if not curves else f"accuracy (%), mean of {report.n_samples} samples")
    axes[0].set_title(f"{report.dataset or 'dataset'}: accuracy")
    if curves:
        ks = ks_for(report.n_samples)
        for r in report.results:
            axes[1].plot(ks, [100 * r.pass_at_k[k] for k in ks], marker="o", label=r.name)
        axes[1].set_xscale("log", base=2)
        axes[1].set_xticks(ks, [str(k) for k in ks])
        axes[1].set_xlabel("k")
        axes[1].set_ylabel("pass@k (%)")
        axes[1].set_title("pass@k")
        axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(report: EvalReport, out_dir: str | os.PathLike) -> list[Path]:
    return write_result_files(out_dir, "results", report_dict(report), markdown_table(report),
                              lambda path: plot_report(report, path))
