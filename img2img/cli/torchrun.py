"""`--nproc N`: a command re-runs itself under torchrun on this machine, in this process."""
from __future__ import annotations

import sys

import typer

from img2img.cli.base import print_message


def without_nproc(args: list[str]) -> list[str]:
    """`args` less ``--nproc N`` / ``--nproc=N`` (the workers must not launch again)."""
    cleaned, skip = [], False
    for a in args:
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        cleaned.append(a)
    return cleaned


def exec_torchrun(nproc: int, what: str, ended: str = "stopped") -> None:
    """Re-run this command under torchrun (single node) and exit with its code; torchrun sets WORLD_SIZE
    for the workers. `what` names the job in the one line said when a worker fails ("the training on
    2 processes stopped (exit code 1); the reason is printed above")."""
    import logging
    import signal

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    # the workers say what happened; the launcher's own log lines would only repeat it
    for name in ("torch.distributed.elastic.multiprocessing.api", "torch.distributed.elastic.agent.server.api"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:  # torchrun in this process: a worker's failure is its own message (printed), not a launcher traceback
        run(get_args_parser().parse_args(["--standalone", f"--nproc-per-node={nproc}", "-m", "img2img",
                                          *without_nproc(sys.argv[1:])]))
    except SignalException as exc:  # Ctrl-C / SIGTERM: the workers stopped and said so
        raise typer.Exit(130 if exc.sigval == signal.SIGINT else 143) from None
    except ChildFailedError as exc:
        codes = sorted({failure.exitcode for failure in exc.failures.values() if failure.exitcode > 0}) or [1]
        code = codes[0]  # (the others were stopped by the launcher: negative, a signal)
        if code not in (130, 143):  # a stopped job said so already
            print_message(f"the {what} on {nproc} processes {ended} (exit code {', '.join(map(str, codes))}); "
                          "the reason is printed above.", prefix="error:")
        raise typer.Exit(code) from None
    raise typer.Exit(0)
