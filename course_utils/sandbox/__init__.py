"""The sandbox side of the grader: the code that runs *inside* the grader's sandbox.

:mod:`.zygote` is the sandbox's long-lived process (numpy, torch and the learner-facing part of
``course_utils`` imported once); it forks one :mod:`.child` per submission, which runs the
submission's cells and, one case at a time, the exercises' ``run`` drivers on the learner's
objects, and sends back plain data (:mod:`.wire`). The child judges nothing: the grader, a
process the child cannot reach, compares what comes back with the answers. :mod:`.traps`
(forbidden calls, patched libraries) and :mod:`.seccomp` (no new processes, no signals to
others) are best-effort signals and limits inside the child.

Nothing here may import ``course_utils.answers``, ``course_utils.reference`` or
``course_utils.grading``: the sandbox does not contain them.
"""
