"""benchmarks/batch_size.py: lr grids grown until their best point is inside, and the crossover batch size."""

from __future__ import annotations

import math
import sys

import pytest

from tests.helpers import REPO

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")
sys.path.insert(0, str(REPO / "benchmarks"))
import batch_size  # noqa: E402

SETTINGS = batch_size.Settings(batch_sizes=(64, 256), seeds=(0, 1, 2), epochs=1, samples=100, grid_points=3, grid_factor=3.0)


class InlinePool:
    """The part of a process pool that `tune` uses, run in this process."""

    def map(self, function, tasks):
        return [function(task) for task in tasks]


def synthetic_runs(monkeypatch, best_lr_over_centre: dict[str, float]):
    """Replace training by an accuracy that peaks (in log lr) at `best_lr_over_centre[name]` x the grid's
    centre; Lion gains 0.01 per doubling of the batch over AdamW, and seeds add a little noise."""

    def run(task):
        name, lr, size, _, seed = task
        centre = batch_size.LR_CENTRE_AT_64[name] * math.sqrt(size / 64)
        distance = abs(math.log(lr / (centre * best_lr_over_centre[name])))
        accuracy = 0.8 - 0.05 * distance + (0.01 * math.log2(size / 64) if name == "Lion" else 0.0) + 0.001 * seed
        return accuracy, accuracy - 0.002

    monkeypatch.setattr(batch_size, "run", run)


def test_grid_grows_past_the_edge_until_the_best_lr_is_inside(monkeypatch):
    synthetic_runs(monkeypatch, {"AdamW": 9.0, "Lion": 1 / 9})
    searches = batch_size.tune(SETTINGS, InlinePool())
    adamw, lion = searches[("AdamW", 64)], searches[("Lion", 64)]
    assert adamw.best_lr() == pytest.approx(9e-3) and not adamw.on_edge() and adamw.extensions == 2
    assert lion.best_lr() == pytest.approx(1e-3 / 27) and not lion.on_edge() and lion.extensions == 2
    assert all(len(results) == len(SETTINGS.seeds) for results in adamw.results.values())


def test_grid_stops_growing_after_the_last_extension_and_says_edge(monkeypatch):
    synthetic_runs(monkeypatch, {"AdamW": 1e6, "Lion": 1.0})
    searches = batch_size.tune(SETTINGS, InlinePool())
    adamw = searches[("AdamW", 64)]
    assert adamw.extensions == batch_size.MAX_EXTENSIONS and adamw.on_edge()
    assert searches[("Lion", 64)].extensions == 0
    text, summaries = batch_size.report(SETTINGS, searches, quick=True, seconds=1.0)
    assert summaries[("AdamW", 64)]["edge"] and ", edge)" in text


def test_report_gives_test_accuracy_of_the_best_validation_point_and_the_crossover(monkeypatch, tmp_path):
    synthetic_runs(monkeypatch, {"AdamW": 1.0, "Lion": 1.0})
    searches = batch_size.tune(SETTINGS, InlinePool())
    text, summaries = batch_size.report(SETTINGS, searches, quick=True, seconds=1.0)
    lion_64, lion_256 = summaries[("Lion", 64)], summaries[("Lion", 256)]
    assert lion_64["mean"] == pytest.approx(0.8 + 0.001 - 0.002)  # mean over seeds 0, 1, 2 of the test accuracy
    assert lion_64["sd"] == pytest.approx(0.001)
    assert lion_256["mean"] - summaries[("AdamW", 256)]["mean"] == pytest.approx(0.02)
    # Level at 64 (0.0 difference), ahead at 256: the crossover is 256.
    assert "Crossover: Lion is ahead from batch 256 on" in text
    batch_size.plot(SETTINGS, summaries, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize(
    ("differences", "expected"),
    [
        ([(32, -0.01), (128, 0.0), (512, 0.02), (2048, 0.03)], 512),
        ([(32, -0.01), (128, 0.01), (512, -0.02), (2048, 0.03)], 2048),
        ([(32, 0.01), (128, 0.01)], None),  # ahead everywhere: no change of sign
        ([(32, -0.01), (128, -0.01)], None),
        ([(32, 0.01), (128, -0.01)], None),  # behind at the largest batch
    ],
)
def test_crossover(differences, expected):
    assert batch_size.crossover(differences) == expected


def test_one_real_run_learns_beyond_chance():
    data = batch_size.make_data(2000)
    validation, test = batch_size.train("Lion", 1e-3, 32, 3, 0, data)
    assert validation > 0.2 and test > 0.2  # 10 classes: chance is 0.1
