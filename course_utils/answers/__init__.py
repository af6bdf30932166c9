"""The exercises' reference answers, one module per lesson (``lessonNN.py``).

The one home for answers."""
