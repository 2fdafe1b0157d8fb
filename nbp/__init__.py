"""nbp: a declarative batch pipeline for Nano Banana Pro.

The installed distribution has one import name. In the repository the packages stay at the
top level (flows/, providers/, outputs/, schemas/) and `nbp/` holds symbolic links to them, so
`nbp.flows` is the same files under the one name; a wheel carries them as `nbp/flows/...`.
"""
