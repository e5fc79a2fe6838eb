"""protonfem.crossbar: array-level training on simulated crossbars driven by compact device models.

NumPy/SciPy, with numba-compiled pulsed-update and MVM kernels (:mod:`._kernels`; a NumPy
path remains as fallback); no solver, no DOLFINx.  Main entry points:

* :mod:`.families` - the compact-model families (THE one definition of each update law) and the
  cycle-to-cycle scatter models; ``postprocess/`` imports them to fit parameters.
* :mod:`.schema` - versioned model files: :func:`load_model`, :func:`save_model`, :class:`DeviceModel`.
* :mod:`.builtin` - reference devices from the literature (``ideal``, ``gokmen-vlasov``, ...).
* :mod:`.devices`, :mod:`.tile`, :mod:`.algorithms` - device arrays, analog tiles, SGD/TT/TTv2/MP.
* :mod:`.train` - :class:`TrainConfig`, :func:`train`, :func:`write_results`; :mod:`.cli` - ``protonfem train``.
"""
from .builtin import BUILTINS, builtin_model, resolve_model
from .families import FAMILIES, GaussianScatter, ShotScatter, symmetry_point
from .schema import SCHEMA_VERSION, DeviceModel, ModelFileError, load_model, model_from_dict, save_model

__all__ = ["BUILTINS", "builtin_model", "resolve_model", "FAMILIES", "GaussianScatter", "ShotScatter",
           "symmetry_point", "SCHEMA_VERSION", "DeviceModel", "ModelFileError", "load_model", "model_from_dict",
           "save_model"]
