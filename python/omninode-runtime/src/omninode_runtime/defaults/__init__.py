"""Working default behaviours that generated handler stubs call.

Usage from a handler: ``from omninode_runtime.defaults import effect`` and then
``return effect.write_record(request, context)``.  Each default is a plain
function of the request and the context, so a team can replace one call at a
time with real work while keeping the others.
"""

from . import compute, effect, orchestrator, reducer

__all__ = ["compute", "effect", "orchestrator", "reducer"]
