"""Python processes that see installed packages as missing: a machine without them, simulated.

``hiding_env(folder, modules)`` writes ``folder/sitecustomize.py`` and returns an environment
whose PYTHONPATH starts with ``folder``. Every Python process started with it, and every process
those start (pytest, multiprocessing's spawned children), finds none of ``modules`` (a dotted
name hides its submodules): ``import`` raises ModuleNotFoundError and
``importlib.util.find_spec`` returns None, as when the package is not installed. Each of the
import system's finders is wrapped, rather than one finder added that raises, so that code
probing for a package (torch does, at import) sees "not installed", not an error.
"""

import os
from pathlib import Path

_SITECUSTOMIZE = '''\
import sys

HIDDEN = {hidden!r}


def _hidden(name):
    return any(name == h or name.startswith(h + ".") for h in HIDDEN)


class _Hide:
    """One of the import system's finders, answering "not found" for the hidden packages."""

    def __init__(self, finder):
        self._finder = finder

    def find_spec(self, name, path=None, target=None):
        return None if _hidden(name) else self._finder.find_spec(name, path, target)

    def __getattr__(self, attr):
        return getattr(self._finder, attr)


sys.meta_path[:] = [_Hide(f) for f in sys.meta_path]
'''


def hiding_env(folder: Path, modules) -> dict[str, str]:
    """``os.environ`` with PYTHONPATH led by ``folder``, whose sitecustomize.py hides ``modules``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(_SITECUSTOMIZE.format(hidden=tuple(modules)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(folder), *filter(None, [env.get("PYTHONPATH")])])
    return env
