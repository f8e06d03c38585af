"""On PYTHONPATH, makes `import torch` fail in every process (Python imports `sitecustomize` at start),
and says so on stderr: a process that still works proves its path never needs torch, and the line
shows any attempt, even one a library catches."""

import importlib.abc
import sys

MARKER = "hide_torch: an import of torch was attempted"


class HideTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            print(f"{MARKER} ({name})", file=sys.stderr, flush=True)
            raise ModuleNotFoundError(f"No module named {name!r} (hidden by the test)", name=name)
        return None


sys.meta_path.insert(0, HideTorch())
