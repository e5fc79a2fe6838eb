"""Physical tags of the device meshes, defined once.

Cells (gmsh physical volumes in 3-D, surfaces in 2-D, curves in 1-D) carry a region tag, facets
(surfaces in 3-D, curves in 2-D, points in 1-D) a boundary or interface tag. The same integers are used by ``meshes/`` (gmsh physical
groups), by the solver (``dx(tag)``, ``ds(tag)``, ``dS(tag)``) and by post-processing.
"""
from __future__ import annotations

# --- cells -------------------------------------------------------------------------------------
RESERVOIR = 1
ELECTROLYTE = 2
CHANNEL = 3

# --- facets ------------------------------------------------------------------------------------
GATE = 11  # top of the reservoir (top of the stack)
BOTTOM = 12  # bottom of the channel (bottom of the stack, z = 0)
SOURCE = 13  # channel's x = 0 edge (2-D) or face (3-D)
DRAIN = 14  # channel's x = L edge (2-D) or face (3-D)
SIDES = 15  # lateral x = 0 / x = L edges (2-D) or faces (3-D) of electrolyte and reservoir
FLANKS = 16  # y = 0 / y = W faces of every layer, across the channel width (3-D only)
RESERVOIR_ELECTROLYTE = 21  # interior interface
ELECTROLYTE_CHANNEL = 22  # interior interface

CELL_TAGS: dict[str, int] = {"reservoir": RESERVOIR, "electrolyte": ELECTROLYTE, "channel": CHANNEL}
FACET_TAGS: dict[str, int] = {
    "gate": GATE,
    "bottom": BOTTOM,
    "source": SOURCE,
    "drain": DRAIN,
    "sides": SIDES,
    "flanks": FLANKS,
    "reservoir_electrolyte": RESERVOIR_ELECTROLYTE,
    "electrolyte_channel": ELECTROLYTE_CHANNEL,
}
CELL_NAMES: dict[int, str] = {v: k for k, v in CELL_TAGS.items()}
FACET_NAMES: dict[int, str] = {v: k for k, v in FACET_TAGS.items()}

#: Interface facet tag for an (unordered) pair of adjacent layers.
INTERFACE_TAGS: dict[frozenset[str], int] = {
    frozenset(("reservoir", "electrolyte")): RESERVOIR_ELECTROLYTE,
    frozenset(("electrolyte", "channel")): ELECTROLYTE_CHANNEL,
}

#: Facets lying between two cells of the mesh (use ``dS``); all others are exterior (use ``ds``).
INTERIOR_FACET_TAGS: frozenset[int] = frozenset((RESERVOIR_ELECTROLYTE, ELECTROLYTE_CHANNEL))


def interface_tag(lower: str, upper: str) -> int | None:
    """Facet tag of the interface between two adjacent layers (order-independent), or None."""
    return INTERFACE_TAGS.get(frozenset((lower, upper)))


def tag_name(tag: int) -> str:
    """Name of a cell or facet tag (cell and facet tags do not overlap)."""
    if tag in CELL_NAMES:
        return CELL_NAMES[tag]
    if tag in FACET_NAMES:
        return FACET_NAMES[tag]
    raise KeyError(f"unknown physical tag {tag}")
