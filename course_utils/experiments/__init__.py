"""Lesson-specific experiments: the loops and sweeps behind the notebooks' figures and claim checks.

One small module per topic, imported explicitly by the lesson that uses it, for example
``from course_utils.experiments import scaling``. Nothing is imported here, so importing one
lesson's machinery never pays for another's.
"""
