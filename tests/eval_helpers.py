"""Load the eval/teacache/ and scripts/ files (plain files, not a package) as modules for the tests."""

import importlib.util
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_eval_module(relative_path: str, name: str):
    """eval/teacache/<relative_path> as module `name` (registered in sys.modules so Ray can pickle from it)."""
    if name in sys.modules:
        return sys.modules[name]
    path = os.path.join(ROOT, "eval", "teacache", relative_path)
    folder = os.path.dirname(path)
    if folder not in sys.path:  # the scripts import their siblings (utils, lpips_alex, cal_vbench)
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_script(name: str):
    """scripts/<name>.py as module `videosys_scripts_<name>` (loaded once)."""
    module_name = f"videosys_scripts_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, os.path.join(ROOT, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module
