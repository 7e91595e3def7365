"""healthcheck reaches ris_model only through healthcheck.ris, and only when asked to."""

import subprocess
import sys
from pathlib import Path


def test_importing_the_harness_imports_no_ris_model():
    code = ("import sys, healthcheck, healthcheck.cli, healthcheck.gate, healthcheck.pytest_plugin, "
            "healthcheck.ris, healthcheck.integrations; "
            "bad = [m for m in sys.modules if m.split('.')[0] == 'ris_model']; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(Path(__file__).parents[2]))


def test_the_ris_subject_loads_its_names_on_first_use():
    import healthcheck.ris as ris
    from healthcheck.ris.trainer_callback import RisTrainerHealth

    assert ris.RisTrainerHealth is RisTrainerHealth
    assert set(ris.__all__) <= set(dir(ris))
