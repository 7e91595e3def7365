"""The overfit suite needs healthcheck's pytest plugin (its options and fixtures).

Installed, the package registers the plugin under ``pytest11`` and pytest loads it; from
a bare checkout pass ``-p healthcheck.pytest_plugin``. Without it the suite is skipped
with that sentence rather than erroring on missing fixtures.
"""

from pathlib import Path

import pytest

HERE = Path(__file__).parent
PLUGIN_NAMES = ("healthcheck", "healthcheck.pytest_plugin")
PLUGIN_FIXTURES = {"overfit_device", "overfit_preset", "overfit_update_baseline", "trainer_factory",
                   "overfit_record", "assert_overfits"}


def pytest_collection_modifyitems(config, items):
    if any(config.pluginmanager.hasplugin(name) for name in PLUGIN_NAMES):
        return
    skip = pytest.mark.skip(reason="healthcheck's pytest plugin is not loaded: install the package "
                                   "(it registers the plugin) or pass -p healthcheck.pytest_plugin")
    for item in items:
        if HERE in Path(item.path).parents and PLUGIN_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(skip)
