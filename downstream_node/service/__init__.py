"""The service layer: the node's commands (read the projections, decide with the domain,
append to the ledger, retry on a conflict) and the composition root that wires them.
"""

from .context import OPERATOR, Context
from .node import Node

__all__ = ["OPERATOR", "Context", "Node"]
