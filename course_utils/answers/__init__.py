"""The reference answers of the course's exercises: the one home of every answer.

One module per lesson (``lessonNN.py``); each answer is named like the function or class the
learner writes (``answers.lesson03.batch_norm_forward``). The in-notebook checks and the grader
compute expected values from them; the experiments that need an answer import it from here
(lazily, so that importing an experiment never imports an answer).

The grader's sandbox never sees this package (nor ``course_utils.reference``): learner code
cannot import, read or find these answers while it is graded. Exercise modules refer to an
answer only through ``Exercise.reference = answer("NN", "name")``
(:func:`course_utils.exercises.core.answer`), which imports it when called.
"""
