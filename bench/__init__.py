"""Benchmarks of searcher on the machine they run on: ``python -m bench [--quick]``.

Sections (one module each): overhead, scaling, storage, startup, quality, gpu. Each
``run`` returns a ``bench._common.Section``: headline figures, a markdown table, details.
"""
