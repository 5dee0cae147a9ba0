"""``seal probes build``: the retention probe set for the configured base model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from seal_cli.common import engine_settings, load_model, out, quiet_libraries
from seal_cli.errors import user_errors

probes_app = typer.Typer(help="The retention probe set.", no_args_is_help=True)


@probes_app.command("build")
def probes_build(
    out_path: Annotated[Optional[Path], typer.Option("--out", help="default: the cache under the data dir")] = None,
) -> None:
    """Filter the raw probe facts to those the configured base model answers correctly."""
    quiet_libraries()
    from seal_engine.knowledge.retention import build_probe_set, raw_probes, save_probe_set

    with user_errors():
        settings = engine_settings()
        bundle = load_model(settings)
        probes = build_probe_set(bundle, settings)
        path = out_path or settings.data_dir / "probes" / f"probes_{bundle.model_id}.json"
        save_probe_set(probes, path)
    out.print(f"{len(probes)} of {len(raw_probes())} probes kept -> {path}")
