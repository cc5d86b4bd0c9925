"""Ships the browser app with the package: app.py, pages/ and assets/ stay at the top of the checkout (where
`python app.py` runs them) and are copied into the wheel as ``tmdafm_core/_app/``, where ``tmdafm app`` finds them
in an installed (not editable) package. Everything else is in pyproject.toml."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
APP_FILES = ("app.py", "pages", "assets")


class BuildWithApp(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install runs the checkout's own app.py
        target = Path(self.build_lib) / "tmdafm_core" / "_app"
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        for name in APP_FILES:
            source = ROOT / name
            if source.is_dir():
                shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(source, target / name)


setup(cmdclass={"build_py": BuildWithApp})
