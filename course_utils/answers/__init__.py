"""The exercises' reference answers, one module per lesson (``lessonNN.py``); the grader's
sandbox cannot see them."""
