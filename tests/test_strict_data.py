"""Strict CSV data: every bad cell, row or header is an error naming the file (and line and
column); a column or time with no measurement is a warning naming it."""

import warnings

import numpy as np
import pytest

import deepest


def write(tmp_path, text, name="d.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_valid_csv_with_unmeasured_cells_reads_as_before(tmp_path):
    text = "t,x0,x3\n0.0,1.5,nan\n0.1,,2.0\n# a comment line\n\n0.2,-0.25,NaN\n0.3,4e-1, 7 \n"
    path = write(tmp_path, text)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = deepest.Observations.load(path)
    # the reading before strict data: numpy's genfromtxt, non-finite cells unmeasured
    table = np.genfromtxt(path, delimiter=",", skip_header=1, ndmin=2)
    mask = np.isfinite(table[:, 1:])
    assert data.observed == (0, 3)
    np.testing.assert_array_equal(data.times, table[:, 0])
    np.testing.assert_array_equal(data.mask, mask)
    np.testing.assert_array_equal(data.values, np.where(mask, table[:, 1:], 0.0))
    np.testing.assert_array_equal(data.mask, [[1, 0], [0, 1], [1, 0], [1, 1]])
    # fully measured: no mask, as before
    full = deepest.Observations.load(write(tmp_path, "t,x1\n0,1\n1,2\n", "full.csv"))
    assert full.mask is None and full.observed == (1,)


def test_text_cell_names_file_line_column(tmp_path):
    path = write(tmp_path, "t,x0,x1\n0.0,1.0,2.0\n0.1,abc,2.0\n0.2,1.0,2.0\n")
    with pytest.raises(ValueError, match=r"d\.csv:3:2: cell 'abc' \(column x0\) is not a number"):
        deepest.Observations.load(path)


@pytest.mark.parametrize("cell", ["inf", "-inf", "+Inf", "INF", "-Infinity"])
def test_inf_cell_names_file_line_column(tmp_path, cell):
    path = write(tmp_path, f"t,x0,x1\n0.0,1.0,2.0\n0.1,1.0,2.0\n0.2,1.0,{cell}\n")
    with pytest.raises(ValueError, match=r"d\.csv:4:3: cell .* \(column x1\) is infinite"):
        deepest.Observations.load(path)


def test_ragged_row_names_file_line_and_counts(tmp_path):
    path = write(tmp_path, "t,x0,x1\n0.0,1.0,2.0\n0.1,1.0\n0.2,1.0,2.0\n")
    with pytest.raises(ValueError, match=r"d\.csv:3: expected 3 cells .*, got 2"):
        deepest.Observations.load(path)
    path = write(tmp_path, "t,x0\n0.0,1.0\n0.1,1.0,5\n", "long.csv")
    with pytest.raises(ValueError, match=r"long\.csv:3: expected 2 cells .*, got 3"):
        deepest.Observations.load(path)


@pytest.mark.parametrize(
    "header, match",
    [
        ("t,xa", r"h\.csv:1:2: .*header cell 'xa'"),
        ("t,x0,y1", r"h\.csv:1:3: .*header cell 'y1'"),
        ("time,x0", r"h\.csv:1:1: .*first cell is 'time'"),
    ],
)
def test_bad_header_names_file_and_cell(tmp_path, header, match):
    path = write(tmp_path, f"{header}\n0.0,1.0\n0.1,2.0\n", "h.csv")
    with pytest.raises(ValueError, match=match):
        deepest.Observations.load(path)


def test_all_unmeasured_column_warns_naming_it(tmp_path):
    path = write(tmp_path, "t,x0,x4\n0.0,1.0,nan\n0.1,2.0,\n0.2,3.0,NaN\n")
    with pytest.warns(UserWarning, match=r"d\.csv: column x4 has no measurement"):
        data = deepest.Observations.load(path)
    np.testing.assert_array_equal(data.mask, [[1, 0]] * 3)


def test_all_unmeasured_time_warns_naming_it(tmp_path):
    path = write(tmp_path, "t,x0,x1\n0.0,1.0,2.0\n0.5,nan,\n1.0,3.0,4.0\n")
    with pytest.warns(UserWarning, match=r"d\.csv: time t=0\.5 \(line 3\) has no measurement"):
        data = deepest.Observations.load(path)
    np.testing.assert_array_equal(data.mask, [[1, 1], [0, 0], [1, 1]])


@pytest.mark.parametrize(
    "text, match",
    [
        ("t,x0\n0.0,1.0\n,2.0\n", r"d\.csv:3:1: the time .* is missing"),
        ("t,x0\n0.0,1.0\n-0.1,2.0\n", r"d\.csv: .*increasing"),
        ("t,x0,x0\n0.0,1.0,1.0\n0.1,2.0,2.0\n", r"d\.csv: .*distinct"),
        ("t,x0\n0.0,nan\n0.1,\n", r"d\.csv: .*hides every measurement"),
        ("t,x0\n", r"d\.csv: no data rows"),
        ("", r"d\.csv: empty CSV file"),
    ],
)
def test_every_csv_error_names_the_file(tmp_path, text, match):
    with pytest.raises(ValueError, match=match):
        deepest.Observations.load(write(tmp_path, text))
