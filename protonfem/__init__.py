"""protonfem: protonic programmable resistors from field equations to trained networks.

The distribution maps the repository's top-level folders into this one namespace:
``protonfem.solver`` (solver/), ``protonfem.meshes`` (meshes/), ``protonfem.postprocess``
(postprocess/) and ``protonfem.crossbar`` (crossbar/).
"""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("protonfem")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"
