import os

import pytest
import torch

# Tests compare numbers; keep them deterministic and within the 2-core budget.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_collection_modifyitems(config, items):
    """`slow` tests (long end-to-end runs) run only with MAE_RUN_SLOW=1 or when selected with -m slow."""
    if os.environ.get("MAE_RUN_SLOW") == "1" or "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow end-to-end test; set MAE_RUN_SLOW=1 (make test-all) to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _precision_cache(tmp_path_factory, monkeypatch):
    """precision=auto caches its decision; tests keep it out of the user's ~/.cache."""
    monkeypatch.setenv("MAE_CACHE_DIR", str(tmp_path_factory.mktemp("mae_cache")))


@pytest.fixture(autouse=True)
def _fresh_mm_singletons():
    """mmengine keeps its global instances (loggers with their stderr handlers, the visualizer with its
    save dir, message hubs) across in-process runs, where each real run has a process of its own: drop
    them after each case, so the next case (and the next test module) starts as a new process would.
    Every module that runs the Runner in-process needs this, so it lives here."""
    yield
    try:
        from mmengine.logging import MMLogger
        from mmengine.utils import ManagerMixin
    except ImportError:
        return
    for logger in MMLogger._instance_dict.values():
        for h in logger.handlers:
            h.close()
    stack = [ManagerMixin]
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if "_instance_dict" in vars(cls):
            cls._instance_dict.clear()
