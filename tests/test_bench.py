"""The benchmark runner: each section's measuring function runs on a small case."""

import nbformat

from course_utils import bench


def test_bench_notebooks_times_each_notebook_from_a_fresh_kernel(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = sum(range(10))")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    nbformat.write(nb, tmp_path / "00_tiny.ipynb")
    rows = bench.bench_notebooks(repeat=2, folder=tmp_path)
    assert [r[0] for r in rows] == ["00_tiny.ipynb"]
    name, median, slowest = rows[0]
    assert 0 < median <= slowest < 60
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00_tiny.ipynb"]  # nothing written here
