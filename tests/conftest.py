import os

import pytest


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own gatebench cache folder (hash cache, reference statistics)."""
    monkeypatch.setenv("GATEBENCH_CACHE", str(tmp_path_factory.mktemp("gatebench-cache")))
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
