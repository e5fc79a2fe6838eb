"""protonfem.meshes: parametrised gmsh builders of the device, graded at interfaces, with tags.

``tags`` and ``grading`` need only numpy; the gmsh builders (``device``) are imported lazily.
"""
from . import tags
from .grading import graded_points, graded_sizes, stack_breaks, stack_points

__all__ = [
    "tags",
    "graded_points",
    "graded_sizes",
    "stack_breaks",
    "stack_points",
    "MeshInfo",
    "build_stack_1d",
    "build_cross_section_2d",
    "build_device_3d",
    "write_mesh",
]


def __getattr__(name):  # lazy: importing gmsh needs GL/X libraries on some systems
    if name in ("MeshInfo", "build_stack_1d", "build_cross_section_2d", "build_device_3d", "write_mesh",
                "device"):
        import importlib

        device = importlib.import_module(".device", __name__)
        return device if name == "device" else getattr(device, name)
    raise AttributeError(name)
