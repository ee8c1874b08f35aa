"""Lobatto IIIA–IIIB collocation: the equations, their structured Newton solve, the mesh."""

from ._collocation import Collocation as Collocation
from ._mesh import CollocationMesh as CollocationMesh
