"""Independent checks of the finite-element solver.

``sg1d`` is a 1-D Scharfetter-Gummel finite-volume solver of the same reservoir | electrolyte |
channel physics in pure NumPy/SciPy (no DOLFINx/PETSc), used by the verification tests to check
the FE solution of a full gate pulse and its rest.
"""
