"""Logging for the ``protonfem`` command and the solver, MPI-aware.

Everything logs through the ``protonfem`` logger tree (``logging.getLogger("protonfem.…")``).
:func:`configure` (called once by the CLI) decides where records go:

* the console (stderr): rank 0 only by default, since every rank runs the same collective code
  and would say the same thing; with ``all_ranks`` every rank writes, each line prefixed with its
  rank (for debugging a partition or a hang on one rank);
* a log file per run in the results directory (:func:`run_log_file`): ``protonfem.log`` from
  rank 0, and with ``all_ranks`` also ``protonfem.rank<N>.log`` from every other rank.

The console handler prints through ``tqdm.write`` so that a progress bar on rank 0 is redrawn
below the message instead of being torn. Records marked as progress (one line per pulse,
``extra=PROGRESS``) are left out of the console while a bar shows the same thing, and always go
to the file.
"""
from __future__ import annotations

import contextlib
import logging
import os
import platform
import shlex
import sys
from pathlib import Path

LOGGER_NAME = "protonfem"
LEVELS = ("debug", "info", "warning", "error")
LOG_FILE = "protonfem.log"
#: ``log.info(msg, extra=PROGRESS)``: a per-pulse line that the progress bar already shows.
PROGRESS = {"progress": True}

_CONSOLE_FORMAT = "%(asctime)s %(levelname)s %(message)s"
_FILE_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class _Settings:
    level = logging.INFO
    all_ranks = False
    bar_active = False
    command: list[str] | None = None  # the CLI's arguments, for the log header


_settings = _Settings()


def get_logger(name: str = "") -> logging.Logger:
    return logging.getLogger(f"{LOGGER_NAME}.{name}" if name else LOGGER_NAME)


def _world():
    try:
        from mpi4py import MPI
    except ImportError:  # validate/view/train work without MPI
        return None
    return MPI.COMM_WORLD


def _rank_size() -> tuple[int, int]:
    comm = _world()
    return (0, 1) if comm is None else (comm.rank, comm.size)


class _RankFilter(logging.Filter):
    """Adds ``record.rank`` for the formats, and a ``[rank N]`` prefix when every rank logs."""

    def __init__(self, rank: int, prefix: bool):
        super().__init__()
        self.rank, self.prefix = rank, prefix

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank = self.rank
        record.rank_prefix = f"[rank {self.rank}] " if self.prefix else ""
        return True


class _TqdmHandler(logging.StreamHandler):
    """While a progress bar is shown, writes through ``tqdm.write``: the bar is cleared, the
    message printed, and the bar redrawn; progress records are dropped then."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _settings.bar_active and getattr(record, "progress", False):
            return False
        return super().filter(record)

    def emit(self, record: logging.LogRecord) -> None:
        if not _settings.bar_active:
            # One write per line: ranks sharing a terminal or a job's output file do not tear
            # each other's lines (tqdm.write writes the message and the newline separately).
            return super().emit(record)
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except Exception:  # noqa: BLE001 - logging must never raise into the solver
            self.handleError(record)


def _formatter(fmt: str, prefix: bool, datefmt: str | None = None) -> logging.Formatter:
    if prefix:
        fmt = fmt.replace("%(message)s", "%(rank_prefix)s%(message)s")
    return logging.Formatter(fmt, datefmt=datefmt)


def configure(level: str | int = "info", all_ranks: bool = False, stream=None,
              command: list[str] | None = None) -> None:
    """Set up console logging for this process (idempotent: replaces earlier handlers).

    ``level`` applies to the console; the run's log file records at least INFO whatever the
    console shows, so ``--quiet`` still leaves a complete file.
    """
    if isinstance(level, str):
        level = getattr(logging, level.upper())
    _settings.level = level
    _settings.all_ranks = all_ranks
    _settings.command = command
    rank, _ = _rank_size()
    logger = get_logger()
    for h in list(logger.handlers):
        if not isinstance(h, logging.FileHandler):
            logger.removeHandler(h)
    logger.setLevel(min(level, logging.INFO))
    logger.propagate = False  # not through the root logger: no duplicates, no lastResort on idle ranks
    if rank == 0 or all_ranks:
        h = _TqdmHandler(stream or sys.stderr)
        h.setLevel(level)
        h.addFilter(_RankFilter(rank, all_ranks))
        h.setFormatter(_formatter(_CONSOLE_FORMAT, all_ranks, datefmt="%H:%M:%S"))
        logger.addHandler(h)
    else:
        logger.addHandler(logging.NullHandler())


def log_file_name(rank: int) -> str:
    return LOG_FILE if rank == 0 else f"protonfem.rank{rank}.log"


@contextlib.contextmanager
def run_log_file(outdir: Path, comm, header: dict[str, object]):
    """Log into ``outdir`` for the duration of a run: ``protonfem.log`` on rank 0 (every rank
    with ``all_ranks``, one file each), starting with ``header`` (one ``key: value`` a line).
    The file is appended to, so a resumed run keeps the history of the earlier ones."""
    logger = get_logger()
    handler = None
    if comm.rank == 0 or _settings.all_ranks:
        path = Path(outdir) / log_file_name(comm.rank)
        handler = logging.FileHandler(path, mode="a", encoding="utf-8", delay=False)
        handler.setLevel(min(_settings.level, logging.INFO))
        handler.addFilter(_RankFilter(comm.rank, _settings.all_ranks))
        handler.setFormatter(_formatter(_FILE_FORMAT, _settings.all_ranks))
        stream = handler.stream
        stream.write(f"==== protonfem run, rank {comm.rank} of {comm.size} ====\n")
        for key, value in header.items():
            stream.write(f"{key}: {value}\n")
        stream.flush()
        logger.addHandler(handler)
    # Used from Python without configure(): the logger would inherit WARNING from the root
    # logger and the file would miss the INFO lines.
    old_level = logger.level
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.setLevel(old_level)
        if handler is not None:
            logger.removeHandler(handler)
            handler.close()


@contextlib.contextmanager
def progress_bar(enabled: bool, **tqdm_kwargs):
    """A tqdm bar on stderr when ``enabled`` and stderr is a terminal, else None.

    In a batch job (stderr a file) a bar only leaves carriage-return debris; there the
    per-pulse log lines are the progress report instead."""
    bar = None
    if enabled and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(file=sys.stderr, dynamic_ncols=True, leave=True, **tqdm_kwargs)
        _settings.bar_active = True
    try:
        yield bar
    finally:
        if bar is not None:
            bar.close()
            _settings.bar_active = False


def command_line() -> str:
    """The command as given (the CLI's arguments, else this process's argv), shell-quoted."""
    args = ["protonfem", *_settings.command] if _settings.command is not None else [Path(sys.argv[0]).name, *sys.argv[1:]]
    return " ".join(shlex.quote(a) for a in args)


def hosts_summary(comm) -> str:
    """``host (ranks)`` over all ranks, e.g. ``node01 (0-31), node02 (32-63)``; collective."""
    names = comm.allgather(platform.node())
    ranges: dict[str, list[int]] = {}
    for r, n in enumerate(names):
        ranges.setdefault(n, []).append(r)

    def span(rs: list[int]) -> str:
        return str(rs[0]) if len(rs) == 1 else (f"{rs[0]}-{rs[-1]}" if rs[-1] - rs[0] == len(rs) - 1
                                                 else ",".join(map(str, rs)))

    return ", ".join(f"{n} ({span(rs)})" for n, rs in ranges.items())


def environment_petsc_options() -> str:
    """The ``PETSC_OPTIONS`` environment variable, which PETSc reads on top of everything."""
    return os.environ.get("PETSC_OPTIONS", "")


def format_petsc_options(options: dict[str, object]) -> str:
    """``-key value`` the way PETSc's command line spells them (flags without a value)."""
    parts = []
    for k, v in options.items():
        if v is None or v == "":
            parts.append(f"-{k}")
        elif isinstance(v, bool):
            parts.append(f"-{k} {'true' if v else 'false'}")
        else:
            parts.append(f"-{k} {v}")
    return " ".join(parts)


def parse_petsc_option(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` (a leading ``-`` on KEY is dropped; VALUE may be empty for a flag).

    Raises ValueError with a one-line reason."""
    if "=" not in text:
        raise ValueError(f"--petsc-option {text!r}: expected KEY=VALUE (a flag as KEY=, e.g. snes_monitor=)")
    key, value = text.split("=", 1)
    key = key.strip().lstrip("-")
    if not key or not all(c.isalnum() or c == "_" for c in key) or not key[0].isalpha():
        raise ValueError(f"--petsc-option {text!r}: {key!r} is not a PETSc option name "
                         "(letters, digits and _, without the solver prefix)")
    return key, value.strip()
