# The C helper of the host backend and the simulator's C core are compiled at install
# time (cffi API mode).  The git commit of the checkout being installed is recorded in
# the package (bench/build_info.json), so an installed suite can still say where its
# results came from.
import json
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


def _git(*args):
    try:
        r = subprocess.run(["git", "-C", str(Path(__file__).parent), *args],
                           capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


class build_py_with_commit(build_py):
    def run(self):
        super().run()
        commit = _git("rev-parse", "HEAD")
        info = {"commit": commit,
                "dirty": bool(_git("status", "--porcelain", "--untracked-files=no"))
                if commit else None}
        out = Path(self.build_lib) / "bench" / "build_info.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(info) + "\n")


setup(cffi_modules=["bench/host/build_helper.py:ffibuilder", "bench/sim/build_core.py:ffibuilder"],
      cmdclass={"build_py": build_py_with_commit})
