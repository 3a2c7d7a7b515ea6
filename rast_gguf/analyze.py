"""The paper's token-level view of RAST, aggregated over a dataset.

`analyze` decodes every problem greedily with RAST (`track_delta`, so each step carries the large
model's own top token and log p(chosen) under the large model alone and under RAST) and counts:
- the change rate, how often RAST's token differs from the large model's top token given the same
  prefix; one minus it is the path coverage rate (PCR) of the large model along RAST's path, the
  share of positions where the base ranks the steered model's token first (RAST.md);
- per token: which tokens RAST chose in place of the large model's choice ("promoted"), which
  large-model choices it displaced ("displaced"), and the mean shift log p_rast - log p_large of
  each chosen token ("raised" most / "lowered" most: tokens seen at least `min_count` times whose
  mean shift is at least MIN_SHIFT either way);
- with a large RL model, the paper's own PCR: the RL model's greedy path decoded as large base +
  1 * (RL - base), whose tracked top token is the base's choice on the RL model's prefix.
`write_analysis` writes analysis.json, analysis.md and, with matplotlib, analysis.png.
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rast_gguf.report_files import write_result_files
from rast_gguf.sampling import DeltaPair, SamplingParams

MIN_SHIFT = 0.01  # nats: smaller mean shifts are float noise, not the delta acting


@dataclass
class TokenView:
    text: str
    count: int
    mean_shift: float


@dataclass
class Analysis:
    n_problems: int
    n_steps: int
    n_changed: int
    alpha: float
    promoted: list[tuple[str, int]]          # tokens RAST chose over the large model's top token
    displaced: list[tuple[str, int]]         # large-model top tokens RAST did not choose
    raised: list[TokenView]                  # chosen tokens with the largest mean shift
    lowered: list[TokenView]
    changed_by_position: list[tuple[int, int]] = field(default_factory=list)  # (steps, changed) per position
    pcr_rl: float | None = None              # PCR of the large base along the large RL model's greedy path
    n_steps_rl: int = 0

    @property
    def change_rate(self) -> float:
        return self.n_changed / self.n_steps if self.n_steps else 0.0

    @property
    def pcr(self) -> float:
        return 1.0 - self.change_rate


def _decode_paths(engine, prompts: Sequence[str], max_tokens: int):
    """Greedy RAST paths: per step (chosen id, piece, DeltaStats)."""
    from rast_gguf.generate import stream_generate

    greedy = SamplingParams(temp=0.0, seed=0)
    for prompt in prompts:
        yield [(r.token, r.text, r.delta) for r in stream_generate(engine, prompt, max_tokens=max_tokens,
                                                                 sampling=greedy, track_delta=True)
               if r.delta is not None]


def _piece(engine, token: int) -> str:
    return engine.model_large.token_bytes(token, special=True).decode("utf-8", errors="replace")


def analyze(large: str, base: str, tuned: str, prompts: Sequence[str], *, alpha: float = 1.0,
            max_tokens: int = 256, top: int = 15, min_count: int = 3, large_rl: str | None = None,
            n_ctx: int = 2048, n_threads: int | None = None, n_gpu_layers: int = 0,
            flash_attn: str = "auto", placement: dict | None = None) -> Analysis:
    from rast_gguf.engine import RastEngine

    counts, shifts = Counter(), defaultdict(float)
    promoted, displaced = Counter(), Counter()
    by_position: list[list[int]] = []
    n_steps = n_changed = 0
    with RastEngine(large, [DeltaPair(tuned, base, alpha, n_gpu_layers)], n_ctx=n_ctx, n_threads=n_threads,
                    n_gpu_layers=n_gpu_layers, flash_attn=flash_attn, **(placement or {})) as engine:
        for path in _decode_paths(engine, prompts, max_tokens):
            for position, (token, _, stats) in enumerate(path):
                n_steps += 1
                counts[token] += 1
                shifts[token] += stats.shift
                while len(by_position) <= position:
                    by_position.append([0, 0])
                by_position[position][0] += 1
                if stats.changed:
                    n_changed += 1
                    promoted[token] += 1
                    displaced[stats.large_top] += 1
                    by_position[position][1] += 1
        name = lambda t: _piece(engine, t)  # noqa: E731
        views = [TokenView(name(t), c, shifts[t] / c) for t, c in counts.items() if c >= min_count]
        views.sort(key=lambda v: v.mean_shift)
        analysis = Analysis(
            n_problems=len(prompts), n_steps=n_steps, n_changed=n_changed, alpha=alpha,
            promoted=[(name(t), c) for t, c in promoted.most_common(top)],
            displaced=[(name(t), c) for t, c in displaced.most_common(top)],
            raised=[v for v in views[::-1] if v.mean_shift >= MIN_SHIFT][:top],
            lowered=[v for v in views if v.mean_shift <= -MIN_SHIFT][:top],
            changed_by_position=[(s, c) for s, c in by_position])
    if large_rl:
        with RastEngine(large, [DeltaPair(large_rl, large, 1.0, n_gpu_layers)], n_ctx=n_ctx, n_threads=n_threads,
                        n_gpu_layers=n_gpu_layers, flash_attn=flash_attn, **(placement or {})) as engine:
            steps = changed = 0
            for path in _decode_paths(engine, prompts, max_tokens):
                steps += len(path)
                changed += sum(stats.changed for _, _, stats in path)
        analysis.pcr_rl = 1.0 - changed / steps if steps else None
        analysis.n_steps_rl = steps
    return analysis


def markdown(analysis: Analysis) -> str:
    a = analysis
    lines = [f"RAST (alpha {a.alpha:g}) over {a.n_problems} problems, {a.n_steps} greedy steps:",
             f"- RAST's token differs from the large model's top token at {a.n_changed} steps "
             f"({100 * a.change_rate:.2f}%); path coverage rate of the large model along RAST's path: "
             f"{100 * a.pcr:.2f}%"]
    if a.pcr_rl is not None:
        lines.append(f"- path coverage rate of the large base along the large RL model's greedy path: "
                     f"{100 * a.pcr_rl:.2f}% ({a.n_steps_rl} steps)")
    lines += ["", "| promoted by RAST | times | displaced large-model choice | times |", "|---|---:|---|---:|"]
    for i in range(max(len(a.promoted), len(a.displaced))):
        p = a.promoted[i] if i < len(a.promoted) else ("", "")
        d = a.displaced[i] if i < len(a.displaced) else ("", "")
        lines.append(f"| {json.dumps(p[0])[1:-1] if p[0] else ''} | {p[1]} | "
                     f"{json.dumps(d[0])[1:-1] if d[0] else ''} | {d[1]} |")
    lines += ["", "| token | times chosen | mean shift (nats) |", "|---|---:|---:|"]
    for v in a.raised + a.lowered:
        lines.append(f"| {json.dumps(v.text)[1:-1]} | {v.count} | {v.mean_shift:+.3f} |")
    return "\n".join(lines)


def to_dict(analysis: Analysis) -> dict:
    a = analysis
    return {"n_problems": a.n_problems, "n_steps": a.n_steps, "n_changed": a.n_changed, "alpha": a.alpha,
            "change_rate": a.change_rate, "pcr_large_along_rast": a.pcr, "pcr_base_along_rl": a.pcr_rl,
            "promoted": a.promoted, "displaced": a.displaced,
            "raised": [vars(v) for v in a.raised], "lowered": [vars(v) for v in a.lowered],
            "changed_by_position": a.changed_by_position}


def plot(analysis: Analysis, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    a = analysis
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    views = a.raised[:10] + a.lowered[:10][::-1]
    axes[0].barh([repr(v.text) for v in views][::-1], [v.mean_shift for v in views][::-1],
                 color=["#55a868" if v.mean_shift > 0 else "#c44e52" for v in views][::-1])
    axes[0].set_xlabel("mean log p_rast - log p_large of the chosen token (nats)")
    axes[0].set_title("tokens the delta raises / lowers")
    rates = [100 * c / s for s, c in a.changed_by_position]
    axes[1].plot(range(len(rates)), rates, marker=".")
    axes[1].set_xlabel("position in the completion")
    axes[1].set_ylabel("RAST != large top token (%)")
    axes[1].set_title(f"change rate by position (PCR {100 * a.pcr:.1f}%)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_analysis(analysis: Analysis, out_dir: str | os.PathLike) -> list[Path]:
    return write_result_files(out_dir, "analysis", to_dict(analysis), markdown(analysis),
                              lambda path: plot(analysis, path))
