"""The instructor's secret seed for the hidden tests.

The case generators are public code (learners have the package), so a public default seed
would let a learner regenerate the hidden inputs offline and memorise the answers. The
default seed is therefore a random number created once per instructor account, kept in the
user's configuration folder, readable by that user only; ``--seed`` overrides it, and every
JSON report records the seed it used, so a re-grade reproduces the same tests. The seed stays
in the grader: only the generated cases, one at a time, go into the sandbox.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["seed_file", "instructor_seed"]


def seed_file() -> Path:
    """``$COURSE_GRADER_SEED_FILE``, else ``$XDG_CONFIG_HOME/normalization-course/grader-seed``
    (``~/.config/...`` by default)."""
    explicit = os.environ.get("COURSE_GRADER_SEED_FILE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME")
    if not base:
        try:
            base = str(Path.home() / ".config")
        except RuntimeError:  # no home folder: the seed file cannot live in it
            base = "~/.config"
    return Path(base) / "normalization-course" / "grader-seed"


def instructor_seed() -> int:
    """The secret seed, created (64 random bits, file mode 0600) on first use.

    Raises:
        OSError: the file cannot be read or created (the caller says so; ``--seed`` works
            without it).
        ValueError: the file does not hold a number.
    """
    path = seed_file()
    try:
        return int(path.read_text(encoding="ascii").strip())
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    seed = int.from_bytes(os.urandom(8), "big") >> 1  # non-negative, as numpy needs
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:  # another grader created it a moment ago
        return int(path.read_text(encoding="ascii").strip())
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(f"{seed}\n")
    return seed
