"""The `rast` command: dispatch to one module per verb, and turn library errors into one line."""

from __future__ import annotations

import os
import sys

import typer

from rast_gguf.cli.batch import batch_command, merge_command
from rast_gguf.cli.bench import bench_command
from rast_gguf.cli.chat import chat_command
from rast_gguf.cli.check import check_command
from rast_gguf.cli.convert import convert_command, quantize_command
from rast_gguf.cli.demo import demo_command
from rast_gguf.cli.doctor import doctor_command
from rast_gguf.cli.eval import eval_command
from rast_gguf.cli.analyze import analyze_command
from rast_gguf.cli.generate import generate_command
from rast_gguf.cli.pull import pull_command
from rast_gguf.cli.rpc_server import rpc_server_command
from rast_gguf.cli.serve import serve_command

app = typer.Typer(name="rast", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="RAST decoding for GGUF models: large base + alpha * (small RL-tuned - small base).",
                  context_settings={"help_option_names": ["-h", "--help"]})
app.command("generate")(generate_command)
app.command("bench")(bench_command)
app.command("doctor")(doctor_command)
app.command("check")(check_command)
app.command("chat")(chat_command)
app.command("batch")(batch_command)
app.command("pull")(pull_command)
app.command("convert")(convert_command)
app.command("quantize")(quantize_command)
app.command("demo")(demo_command)
app.command("eval")(eval_command)
app.command("analyze")(analyze_command)
app.command("rpc-server")(rpc_server_command)
app.command("serve")(serve_command)


def _usage_error_types() -> tuple[type, ...]:
    """The exceptions Typer raises for command-line usage errors: its vendored click's
    (typer._click, Typer >= 0.25) and, for a Typer that still uses click itself, click's."""
    types = []
    try:
        from typer._click.exceptions import ClickException as VendoredClickException

        types.append(VendoredClickException)
    except ImportError:
        pass
    try:
        import click

        types.append(click.ClickException)
    except ImportError:
        pass
    return tuple(types)


def _abort_types() -> tuple[type, ...]:
    types = [typer.Abort, EOFError]
    try:
        import click

        types.append(click.exceptions.Abort)
    except ImportError:
        pass
    return tuple(types)


def _print_usage_error(e) -> int:
    if type(e).__name__ == "NoArgsIsHelpError":  # `rast` alone: the help text is the answer
        e.show()
        return 0
    ctx = getattr(e, "ctx", None)
    command = ctx.command_path if ctx is not None else "rast"
    message = " ".join(e.format_message().split())
    print(f"error: {message} (see '{command} --help')", file=sys.stderr)
    return e.exit_code


# `rast batch merge ...` is its own small app: `batch` takes a positional IN.jsonl, which a click group
# with a `merge` subcommand could not also take
merge_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False,
                        context_settings={"help_option_names": ["-h", "--help"]})
merge_app.command()(merge_command)


def _which_app(argv: list[str]) -> tuple[typer.Typer, list[str], str]:
    if argv[:2] == ["batch", "merge"]:
        return merge_app, argv[2:], "rast batch merge"
    return app, argv, "rast"


def main() -> None:
    from rast_gguf.errors import RastError

    try:
        which, args, prog_name = _which_app(sys.argv[1:])
        exit_code = which(args=args, prog_name=prog_name, standalone_mode=False)
    except RastError as e:
        if os.environ.get("RAST_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except _abort_types():
        sys.exit(1)
    except _usage_error_types() as e:
        sys.exit(_print_usage_error(e))
    sys.exit(exit_code if isinstance(exit_code, int) else 0)


if __name__ == "__main__":
    main()
