"""Shared test settings.

In CI (``CI`` set, as `.ci/run` is run) nothing may be skipped for want of an installed piece:
scripts/setup.sh installs everything, so a skip there would hide a broken install. Locally, tests
that need an optional piece (a Triton server environment, tritonclient) skip with the reason.
The one exception is hardware no install can bring: a skip whose reason holds
:data:`NEEDS_HARDWARE` (the CUDA parity tests on a machine without a GPU, the no-GPU error tests on one with it) stays a skip.
"""

import os

import pytest

NEEDS_HARDWARE = "depends on the hardware:"


def _allowed(report) -> bool:
    return NEEDS_HARDWARE in str(report.longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail") and not _allowed(report):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where everything must be installed: {report.longrepr}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") and report.skipped and not _allowed(report):
        report.outcome = "failed"
        report.longrepr = f"module skipped in CI, where everything must be installed: {report.longrepr}"


@pytest.fixture(scope="session")
def preset_checkpoint(tmp_path_factory):
    """``preset_checkpoint(task)``: the model.pt of that preset trained 2 epochs on its synthetic task
    (300 cells, seed 1), trained once per session and shared by the export parity tests."""
    from inclust_plus.training.model import InClust
    from evaluation.synthetic import synthetic_task

    made: dict = {}

    def get(task: str):
        if task not in made:
            st = synthetic_task(task, n_cells=300, seed=1, overrides={"training": {"epochs": 2, "batch_size": 64}})
            model, _, _ = InClust.fit(st.config, st.objects, progress=False)
            made[task] = model.save(tmp_path_factory.mktemp(f"preset_{task}") / "model.pt")
        return made[task]

    return get
