"""Row statuses and their order (meldflow.row_status): the worst of a row's steps wins."""
import pytest

from meldflow.row_status import STATUSES, worst


def test_worst_status_order():
    assert worst(["ok", "no_audio"]) == "no_audio"
    assert worst(["no_audio", "unreadable_video", "ok"]) == "unreadable_video"
    assert worst([]) == "ok"
    assert list(STATUSES)[0] == "missing_video"
    with pytest.raises(ValueError):
        worst(["exploded"])
