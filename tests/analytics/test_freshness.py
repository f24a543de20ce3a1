"""The operator caches' change watch: rebuild when empty, look at the files at most every
ttl_s, rebuild only when they changed, and retry a rebuild that raised."""

from __future__ import annotations

import pytest

from bouquet.analytics.freshness import ChangeWatch, file_states


def test_rebuilds_only_when_the_fingerprint_changed_and_looks_at_most_every_ttl() -> None:
    now, state, looks, rebuilds = [0.0], ["a"], [0], [0]

    def fingerprint() -> tuple:
        looks[0] += 1
        return (state[0],)

    def rebuild() -> None:
        rebuilds[0] += 1

    watch = ChangeWatch(fingerprint, ttl_s=10, clock=lambda: now[0])
    watch.refresh(False, rebuild)
    assert (looks[0], rebuilds[0]) == (1, 1)
    state[0] = "b"
    now[0] = 5.0
    watch.refresh(True, rebuild)  # within the ttl: the files are not looked at
    assert (looks[0], rebuilds[0]) == (1, 1)
    now[0] = 10.0
    watch.refresh(True, rebuild)
    assert (looks[0], rebuilds[0]) == (2, 2)
    now[0] = 20.0
    watch.refresh(True, rebuild)  # looked, unchanged
    assert (looks[0], rebuilds[0]) == (3, 2)


def test_a_rebuild_that_raised_is_tried_again_at_the_next_look() -> None:
    now, calls = [0.0], []

    def failing() -> None:
        calls.append("fail")
        raise OSError("file vanished")

    watch = ChangeWatch(lambda: ("x",), ttl_s=10, clock=lambda: now[0])
    watch.refresh(False, lambda: calls.append("ok"))
    now[0] = 10.0
    watch.fingerprint = lambda: ("y",)
    with pytest.raises(OSError):
        watch.refresh(True, failing)
    now[0] = 20.0
    watch.refresh(True, lambda: calls.append("ok"))
    assert calls == ["ok", "fail", "ok"]


def test_file_states_leave_out_vanished_files_and_name_them_from_root(tmp_path) -> None:
    (tmp_path / "d").mkdir()
    kept = tmp_path / "d" / "f.parquet"
    kept.write_bytes(b"1234")
    states = file_states([kept, tmp_path / "gone.parquet"], tmp_path)
    assert [(name, size) for name, size, _ in states] == [("d/f.parquet", 4)]
