"""Make `import healthcheck` mean the package, not this test folder.

pytest puts tests/ on sys.path (for tests/conftest.py); the folder tests/healthcheck then
looks like a namespace package called `healthcheck`, and Python prefers it unless the
real package's parent directory is on sys.path too (an editable install does not put it
there). With the repository root on sys.path the regular package always wins.
"""

import pathlib
import sys

_ROOT = str(pathlib.Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
_mod = sys.modules.get("healthcheck")
if _mod is not None and getattr(_mod, "__file__", None) is None:  # the namespace impostor
    for _name in [n for n in sys.modules if n == "healthcheck" or n.startswith("healthcheck.")]:
        del sys.modules[_name]
