"""The `workbench` command line: `lab` here; `doctor`, `trace` and `report` in cli_commands."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path


def _lab(args: argparse.Namespace) -> int:
    notebooks = Path(args.dir).resolve()
    if not notebooks.is_dir():
        print(f"workbench lab: {notebooks} is not a directory; pass --dir PATH.", file=sys.stderr)
        return 2
    jupyter = shutil.which("jupyter", path=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    if jupyter is None:
        print("workbench lab: JupyterLab is not installed; run `make lab` or pip install jupyterlab.", file=sys.stderr)
        return 2
    cmd = [jupyter, "lab", "--ip=127.0.0.1", f"--port={args.port}", "--no-browser", f"--ServerApp.root_dir={notebooks}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # containers and CI machines often run as root
        cmd.append("--allow-root")
    print(f"Starting JupyterLab on {notebooks} (127.0.0.1:{args.port}); open the URL printed below.", flush=True)
    return subprocess.call(cmd)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="workbench", description="Debugging workbench for transformers.")
    sub = parser.add_subparsers(dest="command", required=True)
    lab = sub.add_parser("lab", help="start JupyterLab on the tutorial notebooks")
    lab.add_argument("--dir", default=str(Path.cwd() / "notebooks"), help="folder to serve (default ./notebooks)")
    lab.add_argument("--port", type=int, default=8888)
    lab.set_defaults(func=_lab)
    from .cli_commands import add_commands

    add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .cli_commands import run

    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
