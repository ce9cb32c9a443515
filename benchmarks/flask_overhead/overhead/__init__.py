"""The pieces of ``run.py``, the Flask overhead benchmark (see its docstring)."""
