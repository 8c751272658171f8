"""griffe extension: classes whose docstring is assembled at import time (``__doc__ = "..." +
shared text``, as the scikit-learn estimators' are) get the docstring Python sees, parsed in
scikit-learn's (numpy) style, as those are written."""
import importlib

import griffe


class RuntimeDocstrings(griffe.Extension):
    def on_class(self, *, cls, **kwargs):
        if cls.docstring is not None or "__doc__" not in cls.members:
            return
        module = importlib.import_module(cls.module.path)
        doc = getattr(module, cls.name).__doc__
        cls.docstring = griffe.Docstring(doc, parent=cls, parser="numpy")
        del cls.members["__doc__"]
