"""The grader under attack: a batch of hostile submissions next to solved classmates.

Every kind of attack that once earned points, took points from classmates, stopped the batch
or wrote outside the grading folder gets at least one submission here (several for reaching
the answers). Each attacker must score 0 on what it attacks, with a reason; the solved
classmates graded in the same batch must keep full marks; and no file outside the grader's
own temporary folder may change (the repository, the submissions, the reports).

The hostile submissions run in one batch (one grader run; the time limits overlap), the
report-path and command-line attacks in a second, small one.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import pickle
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from course_utils.build import build_notebook
from course_utils.grade import main as grade_main
from course_utils.grading import grade
from course_utils.grading.isolation import bwrap_problem

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = {p.name[:2]: p for p in (ROOT / "solutions").glob("*.ipynb")}
SEED = 99
TIMEOUT = 6.0

pytestmark = pytest.mark.skipif(
    bwrap_problem() is not None,
    reason=f"the attack suite needs the bubblewrap sandbox: {bwrap_problem()} "
    "(apt-get install bubblewrap)",
)


# --------------------------------------------------------------------------------------------
# building submissions
# --------------------------------------------------------------------------------------------


def _solved(lesson: str) -> dict:
    return json.loads(SOLUTIONS[lesson].read_text(encoding="utf-8"))


def _exercise_cell(nb: dict, exercise_id: str) -> int:
    for i, c in enumerate(nb["cells"]):
        if c.get("metadata", {}).get("course", {}).get("exercise") == exercise_id:
            return i
    raise LookupError(exercise_id)


def _attack(lesson: str, exercise_id: str, source: str, setup: str = "") -> dict:
    """The solved notebook with only ``exercise_id``'s cell left, replaced by ``source``
    (and ``setup`` appended to the setup cell)."""
    nb = _solved(lesson)
    keep = _exercise_cell(nb, exercise_id)
    cells = []
    for i, c in enumerate(nb["cells"]):
        tagged = c.get("metadata", {}).get("course", {}).get("exercise")
        if tagged and i != keep:
            continue
        if i == keep:
            c = copy.deepcopy(c)
            c["source"] = source
        elif setup and "setup" in c.get("metadata", {}).get("tags", []):
            c = copy.deepcopy(c)
            src = c["source"] if isinstance(c["source"], str) else "".join(c["source"])
            c["source"] = src + "\n" + setup
        cells.append(c)
    nb["cells"] = cells
    return nb


def _late_setup(lesson: str, exercise_id: str, setup_source: str) -> dict:
    """The solved notebook's exercise cell, then a setup-tagged cell after it."""
    solved = _solved(lesson)
    source = solved["cells"][_exercise_cell(solved, exercise_id)]["source"]
    nb = _attack(lesson, exercise_id, "".join(source))
    cell = {"cell_type": "code", "metadata": {"tags": ["setup"]}, "source": setup_source}
    nb["cells"].append({**cell, "outputs": [], "execution_count": None})
    return nb


STD = "00.standardize_columns"
MISSING = r"(ModuleNotFoundError|ImportError|cannot import|No module)"
# Finds the child's channel to the grader, to forge messages on it.
FORGE = """
import os, time
from course_utils.sandbox import wire

def _channel():
    for fd in sorted(int(n) for n in os.listdir("/proc/self/fd")):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                return fd
        except OSError:
            pass
"""
EXEC_DEFINED = '''
exec("""
def standardize_columns(x, eps=1e-5):
    import torch
    t = torch.as_tensor(x, dtype=torch.float64)
    return torch.batch_norm(t, None, None, None, None, True, 0.1, eps, False).numpy()
""")
'''
HAND_BACKWARD = """
import torch

def batch_norm_backward{simple}(dout, x, gamma, eps=1e-5):
    t = torch.tensor(x, requires_grad=True)
    g = torch.tensor(gamma, requires_grad=True)
    b = torch.zeros_like(g, requires_grad=True)
    y = (t - t.mean(0)) / torch.sqrt(t.var(0, unbiased=False) + eps) * g + b
    {how}
    return t.grad.numpy(), g.grad.numpy(), b.grad.numpy()
"""
BATCH_NORM = """
t = torch.as_tensor(x, dtype=torch.float64)
bn = getattr(torch.nn.functional, "batch" + "_norm")  # out of the static scan's sight
return bn(t, None, None, training=True, eps=eps).numpy()
"""
FILL = """
with open({path!r}, "wb") as f:
    for _ in range(4096):
        f.write(b"\\0" * 2**20)
"""


def _std(body: str, head: str = "") -> dict:
    """A lesson-00 submission whose standardize_columns runs ``body``."""
    src = textwrap.dedent(head) + "\ndef standardize_columns(x, eps=1e-5):\n"
    return _attack("00", STD, src + textwrap.indent(textwrap.dedent(body).strip() + "\n", "    "))


def _cell(lesson: str, exercise: str, source: str, setup: str = "") -> dict:
    return _attack(lesson, exercise, textwrap.dedent(source), setup)


def _answer_pickle() -> str:
    """A pickle that names the answer (made here, where the answers exist)."""
    from course_utils.answers.lesson00 import standardize_columns

    return base64.b64encode(pickle.dumps(standardize_columns)).decode()


def _reaching_the_answers() -> dict[str, tuple]:
    return {
        "exec_import": (
            _cell("00", STD, "exec('from course_utils.' + 'answers.lesson00 import *')"),
            STD,
            MISSING,
        ),
        "importlib_runtime_string": (
            _std(
                """
                m = importlib.import_module("course_utils." + "ans" + "wers.lesson00")
                return m.standardize_columns(x, eps)
                """,
                "import importlib",
            ),
            STD,
            MISSING,
        ),
        "reference_by_importlib": (
            _std(
                """
                F = importlib.import_module("course_utils.refer" + "ence.functional")
                return F.batch_norm(x, None, None, training=True, eps=eps)
                """,
                "import importlib",
            ),
            STD,
            MISSING,
        ),
        "pickle_loads": (
            _std(
                "return _f(x, eps)",
                f"import base64, pickle\n_f = pickle.loads(base64.b64decode('{_answer_pickle()}'))",
            ),
            STD,
            MISSING,
        ),
        "getattr_exercises_reference": (
            _std(
                """
                ex = getattr(cu, "exer" + "cises").get_exercise("00.standardize_columns")
                return ex.reference()(x, eps)
                """,
                "import course_utils as cu",
            ),
            STD,
            MISSING,
        ),
        "getattr_lesson_module_helper": (  # a judge's helper that computes the answer
            _cell(
                "03",
                "03.batch_norm_forward",
                """
                import course_utils as cu

                def batch_norm_forward(x, gamma, beta, rm, rv, training, momentum=0.1, eps=1e-5):
                    lesson = getattr(getattr(cu, "exer" + "cises"), "less" + "on03")
                    variant = getattr(lesson, "_forward" + "_variant")()
                    return variant(x, gamma, beta, rm, rv, training, momentum, eps)
                """,
            ),
            "03.batch_norm_forward",
            r"calls course_utils\.exercises\.lesson03\.",
        ),
        "late_setup_cell": (
            _late_setup("00", STD, "standardize_columns = lambda x, eps=1e-5: x\n"),
            STD,
            r"a setup cell .* defines `standardize_columns`",
        ),
        "gc_get_objects": (
            _std(
                """
                names = ("ExpectedCache", "Submission", "Job", "Task")
                loot = [o for o in gc.get_objects() if type(o).__name__ in names]
                loot += [
                    o for o in gc.get_objects()
                    if callable(o) and getattr(o, "__name__", "") == "standardize_columns"
                    and getattr(o, "__module__", "") != "__main__"
                ]
                raise LookupError(f"found {len(loot)} things to steal")
                """,
                "import gc",
            ),
            STD,
            r"raised LookupError: found 0 things to steal",
        ),
        "frame_f_locals": (
            _std(
                """
                f, seen = sys._getframe(1), []
                wanted = ("expected", "cache", "answer", "reference", "job", "results", "seed")
                while f is not None:
                    seen += [k for k in f.f_locals if k in wanted]
                    f = f.f_back
                raise LookupError(f"frames hold {seen}")
                """,
                "import sys",
            ),
            STD,
            r"raised LookupError: frames hold \[\]",
        ),
        "read_solutions_on_disk": (
            _cell(
                "00",
                STD,
                """
                import json, pathlib, course_utils
                root = pathlib.Path(course_utils.__file__).parents[1]
                nb = json.loads((root / "solutions" / "00_start_here.ipynb").read_text())
                """,
            ),
            STD,
            r"FileNotFoundError",
        ),
        "read_answers_source": (
            _cell(
                "00",
                STD,
                """
                import pathlib, course_utils
                here = pathlib.Path(course_utils.__file__).parent
                exec((here / "answers" / "lesson00.py").read_text())
                """,
            ),
            STD,
            r"FileNotFoundError",
        ),
        "answers_from_experiments_01": (
            _cell(
                "01", "01.Standardizer", "from course_utils.experiments.scaling import Standardizer"
            ),
            "01.Standardizer",
            MISSING,
        ),
        "answers_from_experiments_02": (
            _cell(
                "02",
                "02.activation_stats",
                "from course_utils.experiments import covariate_shift as C\n"
                "activation_stats = C.activation_stats\n",
            ),
            "02.activation_stats",
            MISSING,
        ),
        "capstone_held_out_data": (  # train on the test images: they are not in the sandbox
            _cell(
                "09",
                "09.capstone_accuracy",
                """
                import course_utils as cu

                def train_fixed(data, seed):
                    return cu.load_mnist("raw")
                """,
            ),
            "09.capstone_accuracy",
            r"is corrupt|FileNotFoundError",
        ),
        "capstone_custom_module": (  # outside the whitelist: its forward would run in the grader
            _cell(
                "09",
                "09.capstone_accuracy",
                """
                import torch
                from torch import nn

                class Cheat(nn.Module):
                    def forward(self, x):
                        return torch.zeros(len(x), 10)

                def train_fixed(data, seed):
                    return Cheat().eval()
                """,
            ),
            "09.capstone_accuracy",
            r"not an nn\.Sequential; build the model as nn\.Sequential\(\.\.\.\) of",
        ),
    }


def _reporting_on_itself() -> dict[str, tuple]:
    return {
        "forged_result_frame": (
            _std(
                """
                reply = ("case_done", 999, ("ok", 0.0), [], [], False)
                wire.send_frame(_channel(), wire.encode(reply))
                time.sleep(30)
                """,
                FORGE,
            ),
            STD,
            r"sent back something the grader cannot accept",
        ),
        "garbage_frame": (
            _std(
                "os.write(_channel(), b'\\x00\\x00\\x00\\x05' + b'\\xff' * 5)\ntime.sleep(30)",
                FORGE,
            ),
            STD,
            r"sent back something the grader cannot accept",
        ),
        "forged_cell_messages_to_extend_time": (
            _std(
                """
                while True:
                    wire.send_frame(_channel(), wire.encode(("cell_done", 1, None, [])))
                    time.sleep(0.2)
                """,
                FORGE,
            ),
            STD,
            r"sent back something the grader cannot accept",
        ),
        "switch_off_trap_setprofile": (
            _std("sys.setprofile(None)\n" + BATCH_NORM, "import sys, torch"),
            STD,
            r"switches off the grader's call trap|calls torch\.nn\.functional\.batch_norm",
        ),
        "replace_call_trap_armed": (
            _std(
                BATCH_NORM,
                """
                import contextlib, torch
                from course_utils.sandbox import traps
                traps.CallTrap.armed = lambda self: contextlib.nullcontext()
                """,
            ),
            STD,
            r"calls torch\.nn\.functional\.batch_norm",
        ),
    }


def _kernels_by_another_name() -> dict[str, tuple]:
    return {
        "aten_native_batch_norm": (
            _std(
                """
                t = torch.as_tensor(x, dtype=torch.float64)
                out = torch.ops.aten.native_batch_norm(t, None, None, None, None, True, 0.1, eps)
                return out[0].numpy()
                """,
                "import torch",
            ),
            STD,
            r"(calls |uses `)torch\.ops\.aten\.native_batch_norm",
        ),
        "aten_overload_via_getattr": (
            _std(
                """
                op = getattr(getattr(torch.ops.aten, "native_" + "batch_norm"), "default")
                t = torch.as_tensor(x, dtype=torch.float64)
                return op(t, None, None, None, None, True, 0.1, eps)[0].numpy()
                """,
                "import torch",
            ),
            STD,
            r"calls torch\.ops\.aten\.native_batch_norm",
        ),
        "torch_C_variable_functions": (
            _cell(
                "06",
                "06.layer_norm_forward",
                """
                import torch

                def layer_norm_forward(x, gamma, beta, eps=1e-5):
                    fn = getattr(torch._C._VariableFunctions, "native_" + "layer_norm")
                    t = torch.as_tensor(x, dtype=torch.float64)
                    g, b = torch.as_tensor(gamma), torch.as_tensor(beta)
                    return fn(t, (t.shape[-1],), g, b, eps)[0].numpy()
                """,
            ),
            "06.layer_norm_forward",
            r"calls torch\.(_C\._VariableFunctions\.)?native_layer_norm",
        ),
        "exec_defined_function": (  # the forbidden call sits in code made with exec
            _cell("00", STD, EXEC_DEFINED),
            STD,
            r"calls torch\.batch_norm",
        ),
        "backward_kernel_aten": (
            _cell(
                "03",
                "03.batch_norm_backward",
                """
                import torch

                def batch_norm_backward(dout, x, gamma, eps=1e-5):
                    t, g, d = (torch.as_tensor(a, dtype=torch.float64) for a in (x, gamma, dout))
                    op = getattr(torch.ops.aten, "native_batch_norm" + "_backward")
                    _, mean, invstd = getattr(torch.ops.aten, "native_batch" + "_norm")(
                        t, g, None, None, None, True, 0.1, eps
                    )
                    grads = op(d, t, g, None, None, mean, invstd, True, eps, [True, True, True])
                    return tuple(v.numpy() for v in grads)
                """,
            ),
            "03.batch_norm_backward",
            r"calls torch\.ops\.aten\.native_batch_norm",
        ),
        "autograd_backward_in_hand_backward": (  # hidden from the static scan
            _cell(
                "03",
                "03.batch_norm_backward",
                HAND_BACKWARD.format(
                    simple="", how='getattr(y, "back" + "ward")(torch.as_tensor(dout))'
                ),
            ),
            "03.batch_norm_backward",
            r"calls torch\.(Tensor\.backward|autograd)",
        ),
        "autograd_grad_in_hand_backward": (
            _cell(
                "03",
                "03.batch_norm_backward_simple",
                HAND_BACKWARD.format(
                    simple="_simple",
                    how='t.grad, g.grad, b.grad = getattr(torch.autograd, "gr" + "ad")'
                    "(y, (t, g, b), torch.as_tensor(dout))",
                ),
            ),
            "03.batch_norm_backward_simple",
            r"calls torch\.autograd",
        ),
    }


def _between_processes() -> dict[str, tuple]:
    return {
        "kill_the_grader": (_std("os.kill(os.getppid(), 9)", "import os"), STD, "PermissionError"),
        "kill_every_process": (_std("os.kill(-1, 9)", "import os"), STD, "PermissionError"),
        "kill_the_zygote_and_siblings": (
            _std(
                """
                hits = 0
                for pid in range(1, 4096):
                    if pid != os.getpid():
                        try:
                            os.kill(pid, signal.SIGKILL)
                            hits += 1
                        except OSError:
                            pass
                raise RuntimeError(f"killed {hits}")
                """,
                "import os, signal",
            ),
            STD,
            r"raised RuntimeError: killed 0",
        ),
        "setsid_escape_rewrites_reports": (
            _std(
                """
                if os.fork() == 0:
                    os.setsid()
                    open(REPORT, "w").write("{}")
                    os._exit(0)
                """,
                "import os",
            ),
            STD,
            "PermissionError",
        ),
        "append_to_course_utils": (
            _cell(
                "00",
                STD,
                """
                import pathlib, course_utils
                here = pathlib.Path(course_utils.__file__).parent
                for name in ("grading/scoring.py", "exercises/core.py", "__init__.py"):
                    with open(here / name, "a") as f:
                        f.write("\\nFULL_MARKS = True\\n")
                """,
            ),
            STD,
            r"(Read-only file system|FileNotFoundError|PermissionError)",
        ),
        "truncate_a_classmate": (
            _cell("00", STD, "open(CLASSMATE, 'w').close()"),
            STD,
            r"(FileNotFoundError|Read-only file system)",
        ),
        "fill_dev_shm": (_std(FILL.format(path="/dev/shm/fill")), STD, r"Read-only file system"),
        "fill_scratch": (
            _std(FILL.format(path="/tmp/fill")),
            STD,
            r"(File too large|No space left|larger than 64 MiB)",
        ),
        "cpu_hog": (  # threads and processes are refused; the loop runs out of its own time
            _std(
                """
                for _ in range(8):
                    try:
                        threading.Thread(target=lambda: sum(iter(int, 1)), daemon=True).start()
                    except RuntimeError:
                        pass
                    try:
                        os.fork()
                    except OSError:
                        pass
                while True:
                    pass
                """,
                "import os, threading",
            ),
            STD,
            r"ran longer than the 6 s time limit",
        ),
    }


def _bad_files() -> dict[str, tuple]:
    deep = '{"cells": ' + "[" * 100_000 + "]" * 100_000 + ', "metadata": {}}'
    weird = build_notebook(_solved("00"))
    weird["metadata"]["course"]["lesson"] = "²"
    for c in weird["cells"]:
        c.get("metadata", {}).pop("course", None)
        if c["cell_type"] == "code":
            c["source"] = "pass\n"
    placeholder = "raise NotImplementedError\n"
    return {
        "nested_100000_deep": (deep, "?", r"not valid JSON"),
        "expression_600kB": (
            _std("return " + "+".join(["x"] * 300_000)),
            STD,
            r"holds \d+ kB of code",
        ),
        "cell_2_5MB_of_assignments": (_cell("00", STD, "a=1\n" * 625_000), STD, r"holds \d+ kB"),
        "lesson_superscript_two": (weird, "?", r"lesson ² has no graded exercises|could not tell"),
        "setup_imports_IPython_main": (
            _cell("00", STD, placeholder, setup="import IPython.__main__"),
            STD,
            r"not attempted",
        ),
        "setup_imports_f2py_main": (
            _cell("00", STD, placeholder, setup="import numpy.f2py.__main__"),
            STD,
            r"not attempted",
        ),
        "not_json_bytes": (b"\x89PNG\r\n\x1a\n" + bytes(range(256)), "?", r"not valid JSON"),
    }


def _attackers() -> dict[str, tuple[dict | str | bytes, str, str]]:
    """name -> (notebook, exercise attacked or "?" for the whole file, feedback regex)."""
    return {
        **_reaching_the_answers(),
        **_reporting_on_itself(),
        **_kernels_by_another_name(),
        **_between_processes(),
        **_bad_files(),
    }


def _snapshot(*folders: Path) -> dict[str, str]:
    """Every file's content hash under ``folders`` (the repository's own caches excluded)."""
    skip = {
        ".venv",
        ".git",
        "__pycache__",
        ".pytest_cache",
        ".ruff_cache",
        ".hypothesis",
        "test-artifacts",
    }
    out = {}
    for folder in folders:
        for root, dirs, files in os.walk(folder):
            dirs[:] = [d for d in dirs if d not in skip]
            for f in files:
                p = Path(root) / f
                if p.is_symlink() or not p.is_file():
                    out[str(p)] = "link" if p.is_symlink() else "special"
                    continue
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _zygotes() -> set[int]:
    """Processes running a sandbox zygote of this Python (leftovers of a grading run; other
    checkouts on a shared machine run zygotes of their own)."""
    ours = f"{sys.executable}\0-I\0-B\0-m\0course_utils.sandbox.zygote".encode()
    pids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if ours in cmd:
                pids.add(int(entry))
    return pids


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """Every attacker and the solved classmates, graded in one run."""
    subs = tmp_path_factory.mktemp("class")
    reports = tmp_path_factory.mktemp("reports")
    report = reports / "results.json"
    report.write_text('{"written": "before grading"}')
    classmates = {}
    for lesson in ("00", "03", "09"):
        path = subs / f"classmate_{lesson}.ipynb"
        path.write_text(SOLUTIONS[lesson].read_text(encoding="utf-8"))
        classmates[lesson] = path
    attackers = _attackers()
    paths = {}
    for name, (nb, _, _) in attackers.items():
        path = subs / f"attack_{name}.ipynb"
        if isinstance(nb, bytes):
            path.write_bytes(nb)
        else:
            text = nb if isinstance(nb, str) else json.dumps(nb)
            text = text.replace("REPORT", repr(str(report)))
            path.write_text(text.replace("CLASSMATE", repr(str(classmates["00"]))))
        paths[name] = path
    before = _snapshot(ROOT, subs, reports)
    zygotes_before = _zygotes()
    start = time.perf_counter()
    results = grade([subs], seed=SEED, timeout=TIMEOUT, workers=2)
    seconds = time.perf_counter() - start
    after = _snapshot(ROOT, subs, reports)
    leftovers = _zygotes() - zygotes_before
    by_path = {r.path: r for r in results}
    return {
        "attackers": {
            n: (by_path[str(p)], attackers[n][1], attackers[n][2]) for n, p in paths.items()
        },
        "classmates": {lesson: by_path[str(p)] for lesson, p in classmates.items()},
        "changed": sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k)),
        "leftovers": leftovers,
        "seconds": seconds,
        "count": len(results),
    }


ATTACKS = sorted(_attackers()) if bwrap_problem() is None else []


@pytest.mark.parametrize("name", ATTACKS)
def test_attacker_scores_zero_with_a_reason(batch, name):
    result, exercise, reason = batch["attackers"][name]
    assert result.score == 0, (name, result.to_dict())
    assert not result.grader_error, result.to_dict()
    if exercise == "?":
        text = result.note + " " + " ".join(e.feedback for e in result.exercises)
    else:
        text = next(e.feedback for e in result.exercises if e.id == exercise)
    assert re.search(reason, text), (name, reason, text)
    assert all("\n" not in e.feedback and len(e.feedback) <= 400 for e in result.exercises)


def test_classmates_keep_full_marks(batch):
    for lesson, result in batch["classmates"].items():
        assert result.score == result.max_score > 0, (lesson, result.to_dict())


def test_nothing_outside_the_grading_folder_changed(batch):
    assert batch["changed"] == []


def test_no_process_is_left_behind(batch):
    assert batch["leftovers"] == set()


def test_the_batch_is_quick(batch):
    # ~45 submissions, several of which run into a 6 s limit, two workers: a minute or two
    # on a quiet 2-core machine; a hang would take the 15-minute test timeout.
    print(f"attack batch: {batch['count']} submissions in {batch['seconds']:.1f} s")
    assert batch["seconds"] < 600


# --------------------------------------------------------------------------------------------
# the command line: report paths, symbolic links, FIFOs, option-like file names
# --------------------------------------------------------------------------------------------


def test_links_fifos_and_option_like_names(tmp_path, monkeypatch, capsys):
    subs = tmp_path / "class"
    subs.mkdir()
    blank = json.dumps(build_notebook(_solved("00")))
    solved = SOLUTIONS["00"].read_text(encoding="utf-8")
    (subs / "alice.ipynb").write_text(solved)
    (subs / "--seed=7.ipynb").write_text(blank)
    os.symlink(SOLUTIONS["00"], subs / "link_to_solutions.ipynb")
    os.symlink(subs / "alice.ipynb", subs / "link_to_alice.ipynb")
    os.mkfifo(subs / "fifo.ipynb")
    monkeypatch.chdir(subs)
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("not a report")
    os.symlink(victim, out / "linked.json")
    os.mkfifo(out / "fifo.json")
    before = _snapshot(ROOT)

    # a report path that is a link or a FIFO: refused before grading, nothing written through it
    for bad in ("linked.json", "fifo.json"):
        with pytest.raises(SystemExit) as exc:
            grade_main(["alice.ipynb", "--seed", "3", "--json", str(out / bad)])
        assert exc.value.code == 2
    assert victim.read_text() == "not a report"
    capsys.readouterr()

    # every file in the folder, shell-style: "--seed=7.ipynb" is a file, not an option
    files = sorted(os.listdir("."))
    code = grade_main(
        [*files, "--seed", "3", "--json", str(out / "r.json"), "--csv", str(out / "r.csv")]
    )
    assert code == 0, capsys.readouterr()
    report = json.loads((out / "r.json").read_text())
    assert report["seed"] == 3
    rows = {Path(s["path"]).name: s for s in report["submissions"]}
    assert set(rows) == set(files)
    assert rows["alice.ipynb"]["score"] == rows["alice.ipynb"]["max_score"] == 1
    assert rows["--seed=7.ipynb"]["score"] == 0 and "placeholder" in json.dumps(
        rows["--seed=7.ipynb"]
    )
    for name in ("link_to_solutions.ipynb", "link_to_alice.ipynb"):
        assert rows[name]["score"] == 0 and "symbolic link" in rows[name]["note"], rows[name]
    assert rows["fifo.ipynb"]["score"] == 0 and "not a regular file" in rows["fifo.ipynb"]["note"]
    assert _snapshot(ROOT) == before
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # no temporary file left


def test_refuses_to_grade_without_a_sandbox_unless_told(tmp_path, monkeypatch, capsys):
    from course_utils.grading import isolation

    (tmp_path / "a.ipynb").write_text(SOLUTIONS["00"].read_text(encoding="utf-8"))
    monkeypatch.setattr(isolation, "bwrap_problem", lambda: "bubblewrap (bwrap) is not installed")
    assert grade_main([str(tmp_path), "--seed", "1"]) == 2
    err = capsys.readouterr().err
    assert (
        "refusing to run untrusted notebooks without a sandbox" in err
        and "apt-get install bubblewrap" in err
    )
    assert grade_main([str(tmp_path), "--seed", "1", "--no-sandbox"]) == 0


def test_the_default_seed_is_a_per_instructor_secret(tmp_path, monkeypatch, capsys):
    seed_file = tmp_path / "config" / "grader-seed"
    monkeypatch.setenv("COURSE_GRADER_SEED_FILE", str(seed_file))
    (tmp_path / "a.ipynb").write_text(SOLUTIONS["00"].read_text(encoding="utf-8"))
    reports = []
    for k in range(2):
        assert grade_main([str(tmp_path / "a.ipynb"), "--json", str(tmp_path / f"r{k}.json")]) == 0
        reports.append(json.loads((tmp_path / f"r{k}.json").read_text()))
    seed = int(seed_file.read_text())
    assert reports[0]["seed"] == reports[1]["seed"] == seed and seed != 0
    assert seed_file.stat().st_mode & 0o777 == 0o600
    assert str(seed) in capsys.readouterr().out  # the instructor sees which seed was used


def test_grader_problem_gives_a_nonzero_exit_status(tmp_path, monkeypatch, capsys):
    from course_utils.grading import grader

    (tmp_path / "a.ipynb").write_text(SOLUTIONS["00"].read_text(encoding="utf-8"))

    def broken(job):
        raise RuntimeError("a bug in the grader")

    monkeypatch.setattr(grader, "score_job", broken)
    code = grade_main([str(tmp_path), "--seed", "1", "--json", str(tmp_path / "r.json")])
    assert code == 3
    row = json.loads((tmp_path / "r.json").read_text())["submissions"][0]
    assert row["score"] == 0 and "the grader failed on this submission" in row["note"]


def test_a_fifo_submission_cannot_hang_the_command(tmp_path):
    os.mkfifo(tmp_path / "x.ipynb")
    report = tmp_path / "r.json"
    argv = [sys.executable, "-m", "course_utils.grade", str(tmp_path), "--seed", "1"]
    run = subprocess.run(
        [*argv, "--json", str(report)], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert run.returncode == 0, run.stderr
    row = json.loads(report.read_text())["submissions"][0]
    assert row["score"] == 0 and "not a regular file" in row["note"]
