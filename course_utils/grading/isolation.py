"""Where submissions run: a bubblewrap sandbox (the default), or, for trusted notebooks only,
a plain child process.

``bwrap`` (Debian/Ubuntu package ``bubblewrap``) starts each worker's zygote
(:mod:`course_utils.sandbox.zygote`) in new user, PID, mount, IPC, UTS, network and cgroup
namespaces, with no capabilities, ``--die-with-parent`` and ``--new-session``, as an
unprivileged user inside. The sandbox sees a read-only system (``/usr``, the Python
installation and its packages), the learner-facing part of ``course_utils`` and an empty,
size-capped scratch folder; it does not see the course's answers (``course_utils/answers``),
reference implementations (``course_utils/reference``), the grader's code
(``course_utils/grading``, ``grade.py``), the MNIST files (the capstone's held-out images),
the solutions, the submissions, the reports or anything else of the host. Killing the
sandbox's first process kills everything in it.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = [
    "ISOLATIONS",
    "bwrap_problem",
    "resolve_isolation",
    "start_zygote",
    "INSTALL_HINT",
    "SCRATCH_MB",
]

ISOLATIONS = ("sandbox", "none", "auto")
SCRATCH_MB = 128  # the sandbox's writable /tmp (RAM): a submission's files and caches
INSTALL_HINT = (
    "install bubblewrap (Debian/Ubuntu: sudo apt-get install bubblewrap; Fedora: sudo dnf "
    "install bubblewrap), or pass --no-sandbox to grade trusted notebooks without isolation"
)
_PACKAGE = Path(__file__).resolve().parents[1]
# What the sandbox must not see inside the package (answers, reference implementations, the
# grader and its command lines, the MNIST files whose test split is the capstone's held-out
# data).
_HIDDEN_DIRS = ("answers", "reference", "grading")
_HIDDEN_FILES = ("grade.py", "bench_grader.py")
_ETC = (
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "nsswitch.conf",
    "passwd",
    "group",
    "fonts",
    "mime.types",
)
_SANDBOX_UID = 1000
_NAMESPACES = [
    "--unshare-all",
    "--unshare-user",
    "--uid",
    str(_SANDBOX_UID),
    "--gid",
    str(_SANDBOX_UID),
    "--cap-drop",
    "ALL",
    "--die-with-parent",
    "--new-session",
    "--hostname",
    "sandbox",
]


@functools.lru_cache(maxsize=1)
def bwrap_problem() -> str | None:
    """None when bubblewrap can start a sandbox here, else why not (one sentence)."""
    if not sys.platform.startswith("linux"):
        return f"bubblewrap sandboxes need Linux (this is {sys.platform})"
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return "bubblewrap (bwrap) is not installed"
    try:
        run = subprocess.run(
            [bwrap, *_NAMESPACES, "--ro-bind", "/", "/", "--proc", "/proc", "true"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError) as e:
        return f"bubblewrap could not run: {e}"
    if run.returncode != 0:
        why = " ".join(run.stderr.split())[:300] or f"exit status {run.returncode}"
        return f"bubblewrap could not create a sandbox here ({why})"
    return None


def resolve_isolation(isolation: str) -> tuple[str, str | None]:
    """(``"sandbox"`` or ``"none"``, why the sandbox is unavailable or None).

    ``"auto"`` (for a learner's own notebooks on their own machine) falls back to ``"none"``
    where bubblewrap cannot run; ``"sandbox"`` never does.
    """
    if isolation not in ISOLATIONS:
        raise ValueError(f"isolation must be one of {ISOLATIONS}, got {isolation!r}")
    if isolation == "none":
        return "none", None
    problem = bwrap_problem()
    if problem is None:
        return "sandbox", None
    return ("none", problem) if isolation == "auto" else ("sandbox", problem)


def _python_dirs() -> list[str]:
    """The folders the sandbox's interpreter needs: its installation and its packages."""
    dirs = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    exe = Path(sys.executable)
    dirs.add(str(exe.parent))
    dirs.add(str(exe.resolve().parent.parent))
    for p in sys.path:
        if p and ("site-packages" in p or "dist-packages" in p) and os.path.isdir(p):
            dirs.add(p)
    repo = str(_PACKAGE.parent)
    out = []
    for d in sorted(dirs):
        real = str(Path(d).resolve())
        # never the folder that holds the package (the repository, with solutions/)
        if repo.startswith(real.rstrip("/") + "/") or real == repo:
            continue
        out.append(real)
    return sorted(set(out))


def _mask(target: Path, empty_dir: str, empty_file: str) -> list[str]:
    if target.is_dir():
        return ["--ro-bind", empty_dir, str(target)]
    if target.exists():
        return ["--ro-bind", empty_file, str(target)]
    return []


def _package_binds(empty_dir: str, empty_file: str) -> list[str]:
    pkg = _PACKAGE
    args = ["--ro-bind", str(pkg), str(pkg)]
    for name in _HIDDEN_DIRS:
        args += _mask(pkg / name, empty_dir, empty_file)
    hidden = [pkg / n for n in _HIDDEN_FILES]
    hidden += [p for p in (pkg / "data").iterdir() if p.suffix not in (".py",) and p.is_file()]
    for cache in pkg.rglob("__pycache__"):
        rel = cache.parent.relative_to(pkg).parts
        if rel and rel[0] in _HIDDEN_DIRS:
            continue  # already hidden with its package
        for pyc in cache.glob("*.pyc"):
            source = cache.parent / (pyc.name.split(".")[0] + ".py")
            # compiled copies of hidden modules, and of modules that no longer exist
            if source in hidden or not source.exists():
                hidden.append(pyc)
    for path in hidden:
        args += _mask(path, empty_dir, empty_file)
    return args


def _system_binds() -> list[str]:
    args: list[str] = []
    for top in ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    for name in _ETC:
        path = f"/etc/{name}"
        if os.path.exists(path):
            args += ["--ro-bind", path, path]
    return args


def sandbox_command(
    python_args: list[str], workdir: str, driver_files: dict[str, str]
) -> tuple[list[str], dict[str, str]]:
    """The bwrap command line that runs ``python python_args`` in a fresh sandbox.

    Returns:
        (argv, driver files as the sandbox sees them).
    """
    empty_dir = os.path.join(workdir, "empty")
    empty_file = os.path.join(workdir, "empty.txt")
    os.makedirs(empty_dir, exist_ok=True)
    Path(empty_file).touch()
    args = [shutil.which("bwrap") or "bwrap", *_NAMESPACES]
    args += _system_binds()
    for d in _python_dirs():
        args += ["--ro-bind", d, d]
    args += _package_binds(empty_dir, empty_file)
    inside = {}
    for i, (name, path) in enumerate(sorted(driver_files.items())):
        target = f"/run/course-drivers/{i}_{Path(path).name}"
        args += ["--ro-bind", path, target]
        inside[name] = target
    args += [
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--size",
        str(SCRATCH_MB * 2**20),
        "--tmpfs",
        "/tmp",
        "--remount-ro",
        "/dev",
        "--remount-ro",
        "/",
        "--chdir",
        "/tmp",
        "--clearenv",
    ]
    for key, value in _environment("/tmp").items():
        args += ["--setenv", key, value]
    return args + [sys.executable, *python_args], inside


def _environment(scratch: str) -> dict[str, str]:
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": scratch,
        "TMPDIR": scratch,
        "MPLCONFIGDIR": os.path.join(scratch, ".matplotlib"),
        "MPLBACKEND": "Agg",
        "LANG": "C.UTF-8",
        # one thread each: the child may not start threads, and one worker is one CPU
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONHASHSEED": "0",
    }


def start_zygote(
    mode: str,
    index: int,
    workdir: str,
    driver_files: dict[str, str],
    preload: list[str],
) -> tuple[subprocess.Popen, socket.socket, str]:
    """Start one worker: a zygote in a fresh sandbox (``mode="sandbox"``) or a plain process.

    Args:
        driver_files: module name -> host file of run drivers outside the course package.
        preload: modules the zygote imports (those the notebooks' setup cells import).
    Returns:
        (the process, the grader's end of its control socket, its log file).
    """
    grader_end, zygote_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    os.set_inheritable(zygote_end.fileno(), True)
    wdir = os.path.join(workdir, f"worker{index}")
    os.makedirs(wdir, exist_ok=True)
    scratch = "/tmp" if mode == "sandbox" else tempfile.mkdtemp(prefix="scratch-", dir=wdir)
    config = {
        "scratch": scratch,
        "own_pid_namespace": mode == "sandbox",
        "preload": preload,
        "sys_path": [str(_PACKAGE.parent)] if mode == "none" else [],
    }
    log_path = os.path.join(wdir, "zygote.log")
    if mode == "sandbox":
        argv, inside = sandbox_command(
            ["-I", "-B", "-m", "course_utils.sandbox.zygote"], wdir, driver_files
        )
        config["driver_files"] = inside
        argv += [str(zygote_end.fileno()), json.dumps(config)]
        env = None
        cwd = wdir
    else:
        config["driver_files"] = dict(driver_files)
        argv = [
            sys.executable,
            "-I",
            "-B",
            "-m",
            "course_utils.sandbox.zygote",
            str(zygote_end.fileno()),
            json.dumps(config),
        ]
        env = {**_environment(scratch), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        cwd = scratch
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            pass_fds=(zygote_end.fileno(),),
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
    zygote_end.close()
    return proc, grader_end, log_path
