"""HTML rendering of reports: progress-bar redraws collapse to what a terminal shows."""
import warnings

from ckdlab.data.errors import DataWarning, warn_data
from ckdlab.report import as_terminal_shows, merged_streams


def test_carriage_returns_keep_the_last_state_of_each_line():
    assert as_terminal_shows("runs 0%\rruns 50%\rruns 100%\n") == "runs 100%\n"
    assert as_terminal_shows("plain\ntext\n") == "plain\ntext\n"
    assert as_terminal_shows("\r") == ""


def test_consecutive_streams_of_one_name_are_merged_before_collapsing():
    outputs = [
        {"output_type": "stream", "name": "stderr", "text": "\rbar 1/3"},
        {"output_type": "stream", "name": "stderr", "text": "\rbar 3/3"},
        {"output_type": "stream", "name": "stderr", "text": "\n"},
        {"output_type": "stream", "name": "stdout", "text": "cached runs: 0/3\n"},
        {"output_type": "execute_result", "data": {"text/plain": "1"}},
        {"output_type": "stream", "name": "stderr", "text": "\rlater"},
    ]
    merged = merged_streams(outputs)
    assert [o.get("text") for o in merged] == ["bar 3/3\n", "cached runs: 0/3\n", None, "later"]
    assert outputs[0]["text"] == "\rbar 1/3"  # the stored notebook is not modified


def test_data_warnings_point_at_the_callers_line():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_data("x.inter: something was repaired")
    assert caught[0].category is DataWarning
    assert caught[0].filename == __file__
