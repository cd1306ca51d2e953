"""Build ``stablerep_fast._C`` from ``csrc/`` with CMake + pybind11.

Environment variables:
  STABLEREP_FAST_CUDA_ARCHS  CUDA architectures, CMake syntax (default "80;90").
  STABLEREP_FAST_NO_CUDA=1   skip the CUDA sources even when nvcc is found.
  STABLEREP_FAST_NATIVE=1    CPU kernels for this machine only (-march=native) instead of the
                             portable baseline/AVX2/AVX-512 variants picked at run time.
  STABLEREP_FAST_BUILD_JOBS  parallel compile jobs (default: CPU count).
"""

import os
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def _env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    return default if value is None else value.lower() in ("1", "true", "yes", "on")


class CMakeExtension(Extension):
    def __init__(self, name: str, source_dir: Path):
        super().__init__(name, sources=[])
        self.source_dir = source_dir


class CMakeBuild(build_ext):
    def build_extension(self, ext: CMakeExtension) -> None:
        import pybind11

        out_dir = (Path.cwd() / self.get_ext_fullpath(ext.name)).parent.resolve()
        build_dir = Path(self.build_temp).resolve() / ext.name
        build_dir.mkdir(parents=True, exist_ok=True)
        no_cuda = _env_flag("STABLEREP_FAST_NO_CUDA", False)
        args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}{os.sep}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DCMAKE_BUILD_TYPE={'Debug' if self.debug else 'Release'}",
            f"-DSRF_WITH_CUDA={'OFF' if no_cuda else 'ON'}",
            f"-DSRF_NATIVE={'ON' if _env_flag('STABLEREP_FAST_NATIVE', False) else 'OFF'}",
            f"-DSRF_CUDA_ARCHS={os.environ.get('STABLEREP_FAST_CUDA_ARCHS', '80;90')}",
        ]
        jobs = os.environ.get("STABLEREP_FAST_BUILD_JOBS", str(os.cpu_count() or 1))
        subprocess.run(["cmake", str(ext.source_dir), *args], cwd=build_dir, check=True)
        subprocess.run(["cmake", "--build", ".", "--parallel", jobs], cwd=build_dir, check=True)


setup(
    ext_modules=[CMakeExtension("stablerep_fast._C", ROOT)],
    cmdclass={"build_ext": CMakeBuild},
)
