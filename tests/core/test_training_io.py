"""The trainers' shared output check: several processes (accelerate) check the same folder at once."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from negguide.core.training_io import check_writable


def test_concurrent_checks_of_one_folder_do_not_trip_over_each_other(tmp_path):
    folder = str(tmp_path / "run")

    def check_many(_):
        for _ in range(200):
            check_writable(folder)

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(check_many, range(4)))  # re-raises the first error of any worker
    assert os.listdir(folder) == []  # no probe file left behind


def test_unwritable_folder_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ValueError, match="output folder .*file/run.* is not writable"):
        check_writable(str(blocker / "run"))


def test_first_last_means_compare_tenths_not_single_steps():
    from negguide.core.training_io import first_last_means

    history = [{"reward": float(i)} for i in range(30)]  # tenths of 3 rows: 0,1,2 and 27,28,29
    assert first_last_means(history, "reward") == (1.0, 28.0, 3)
    assert first_last_means(history[:5], "reward") == (0.0, 4.0, 1)  # fewer than ten rows: one row each
    with pytest.raises(ValueError, match="at least one history row"):
        first_last_means([], "reward")
