"""Supervisors: the pure restart policy (:func:`decide`) and the loop that carries it out.

Installed as ``prismatic.supervisors``; users normally need only ``import prismatic``.
"""

from ._decide import decide, initial_state
from ._events import SupervisorState
from ._intensity import add_restart

__all__ = ["decide", "initial_state", "SupervisorState", "add_restart"]
