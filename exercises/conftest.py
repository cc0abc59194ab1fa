"""pytest setup for the exercises: say in the report header what is being graded."""

from minids.grading import SOLUTIONS_ENV, grading_solutions


def pytest_report_header(config):
    if grading_solutions():
        return f"minids exercises: grading the reference solutions in minids ({SOLUTIONS_ENV}=solutions)"
    return "minids exercises: grading your code (the NN_topic.py files next to the graders)"


def pytest_configure(config):
    # What a check is worth; a check without the marker is worth 1 point (see minids.classroom).
    config.addinivalue_line("markers", "points(n): the points this check is worth")
