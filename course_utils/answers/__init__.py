"""The exercises' reference answers, one module per lesson (lessonNN.py)."""
