"""The ``seal`` command line: the Typer app that assembles the command groups, and ``main()``.

Each group lives in ``seal_cli/commands/``; heavy imports happen inside the commands so
``--help`` is instant.
"""

from __future__ import annotations

import sys

import typer

from seal_cli.commands.adapt import adapt, ask
from seal_cli.commands.eval import eval_
from seal_cli.commands.keys import keys_list, keys_revoke
from seal_cli.commands.probes import probes_app
from seal_cli.commands.rl import rl
from seal_cli.commands.service import keys_app, serve, worker
from seal_cli.common import console

app = typer.Typer(help="seal: self-adapting language models.", no_args_is_help=True, add_completion=False)
app.command("adapt")(adapt)
app.command("ask")(ask)
app.command("eval")(eval_)
app.command("rl")(rl)
app.add_typer(probes_app, name="probes")
app.command("serve")(serve)
app.command("worker")(worker)
keys_app.command("revoke")(keys_revoke)
keys_app.command("list")(keys_list)
app.add_typer(keys_app, name="keys")


def main() -> None:  # console-script entry point
    try:
        app()
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
