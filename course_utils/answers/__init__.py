"""The exercises' reference answers, one module per lesson (``lessonNN.py``): invisible to the grader's sandbox."""
