"""Entry point: `edgeattn COMMAND ...`. User errors print one line and exit 1."""

from __future__ import annotations

import importlib
import sys

import click

from edgeattn.version import __version__

# "module:attribute" of each command, in the order `--help` lists them. Commands are imported lazily
# so `edgeattn --help` stays fast and no command pays for another's imports.
COMMANDS: dict[str, str] = {
    "demo": "edgeattn.cli.demo_cmd:demo",
    "export": "edgeattn.cli.export_cmd:export",
    "run": "edgeattn.cli.run_cmd:run",
    "inspect": "edgeattn.cli.graph_cmds:inspect",
    "rewrite": "edgeattn.cli.graph_cmds:rewrite",
    "ops": "edgeattn.cli.graph_cmds:ops",
    "compile": "edgeattn.cli.compile_cmd:compile_command",
    "calibrate": "edgeattn.cli.calibrate_cmd:calibrate",
    "profile": "edgeattn.cli.profile_cmd:profile",
    "show": "edgeattn.cli.show_cmd:show",
}

HELP = {
    "demo": "Run the main job end to end on a built-in default model.",
    "export": "Export MODEL to ONNX components and a manifest, validated against PyTorch.",
    "run": "Run an exported folder with onnxruntime (generate, or embed).",
    "inspect": "List the attention sites and edgeattn ops of an ONNX file.",
    "rewrite": "Rewrite the attention sites of an ONNX file into edgeattn ops.",
    "ops": "List the registered edgeattn ops and their attributes.",
    "compile": "Build TensorRT engines from an exported folder or an ONNX file.",
    "calibrate": "Choose sparse-attention values and pruning budgets from data for a goal.",
    "profile": "Measure latency percentiles and where the time goes; compare targets A/B.",
    "show": "Draw which visual tokens a pruned folder keeps, or a sparse layer's block layout.",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Short help without importing every command module.
        with formatter.section("Commands"):
            formatter.write_dl([(name, HELP.get(name, "")) for name in COMMANDS])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgeattn")
def cli() -> None:
    """edgeattn: export, rewrite and run transformers with efficient attention at the edge."""


def main(argv: list[str] | None = None) -> None:
    """Run the CLI. Every user error ends in one line on stderr and exit code 1 (see `boundary`)."""
    from edgeattn.cli.boundary import handle_errors, terminate_like_interrupt

    terminate_like_interrupt()
    with handle_errors():
        cli.main(args=argv, prog_name="edgeattn", standalone_mode=False)
    sys.exit(0)


if __name__ == "__main__":
    main()
