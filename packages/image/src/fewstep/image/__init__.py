"""fewstep for images: offline datasets, shipped feature classifiers and dFD sample quality.

Modules: ``data`` (digits, synthetic shapes, bundled photos), ``classifier`` (small CNN whose
penultimate features define dFD; trained copies ship in ``weights/``), ``quality``
(``evaluate_samples``). Import them directly; this package imports nothing heavy on its own.
"""
