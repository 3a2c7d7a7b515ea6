"""Compatibility report for a RAST triple (or any large model plus delta pairs).

`check_models(large, pairs)` never raises for a bad input: it reads every file's header, then
(only when all are readable GGUF) loads the vocabularies alone (no weights) and runs the same
vocabulary check the engine runs. It returns one row per model and a list of problems (refusals)
and warnings (runs, but probably not what the user wants); `ok` is True when there is no problem.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rast_gguf.errors import RastError
from rast_gguf.gguf_file import GGUFInfo, read_gguf_info
from rast_gguf.sampling import DeltaPair

# Quantizations at or above Q8_0 quality: the small pair's noise does not cancel in the difference.
_PRECISE_TYPES = ("F32", "F16", "BF16", "Q8_0")


@dataclass
class ModelRow:
    role: str
    path: str
    info: GGUFInfo | None
    error: str | None = None


@dataclass
class CheckReport:
    rows: list[ModelRow]
    n_shared: int | None = None
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_models(large: str, pairs: list[DeltaPair]) -> CheckReport:
    roles = [("large", large)]
    for i, pair in enumerate(pairs):
        suffix = f" {i + 1}" if len(pairs) > 1 else ""
        roles += [(f"base{suffix}", pair.base), (f"tuned{suffix}", pair.tuned)]
    rows = []
    for role, path in roles:
        try:
            rows.append(ModelRow(role, str(path), read_gguf_info(path)))
        except RastError as e:
            rows.append(ModelRow(role, str(path), None, str(e)))
    report = CheckReport(rows)
    report.problems += [row.error for row in rows if row.error]
    if report.problems:
        return report

    by_role = {row.role: row.info for row in rows}
    for i in range(len(pairs)):
        suffix = f" {i + 1}" if len(pairs) > 1 else ""
        base, tuned = by_role[f"base{suffix}"], by_role[f"tuned{suffix}"]
        if (base.architecture, base.n_params) != (tuned.architecture, tuned.n_params):
            report.warnings.append(
                f"base{suffix} ({base.architecture}, {base.n_params:,} parameters) and tuned{suffix} "
                f"({tuned.architecture}, {tuned.n_params:,}) differ in shape: the tuned model should be made "
                "from the base by fine-tuning")
        for role, info in ((f"base{suffix}", base), (f"tuned{suffix}", tuned)):
            if not any(info.file_type.upper().startswith(t) for t in _PRECISE_TYPES):
                report.warnings.append(f"{role} is {info.file_type}: keep the small pair at Q8_0 or better, "
                                       "their quantization noise does not cancel in the difference")
    if pairs and by_role["large"].n_params < max(r.info.n_params for r in rows[1:]):
        report.warnings.append("the large model has fewer parameters than a small one; check the order of -m/--base/--tuned")

    from rast_gguf.handles import Model
    from rast_gguf.vocab import check_vocabularies

    models = []
    try:
        models = [Model(row.path, vocab_only=True) for row in rows]
        report.n_shared = check_vocabularies(models[0], models[1:])
    except RastError as e:
        report.problems.append(str(e))
    finally:
        for model in models:
            model.close()
    return report
