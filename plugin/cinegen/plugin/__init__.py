"""The cinegen DCC plugin: a host-agnostic Qt panel, its server session, and host adapters.

Split as in Krita AI Diffusion: ``backend/`` talks to the server (no Qt in its plain modules; the
Qt session only moves work off the UI thread), ``model/`` holds observable state as plain data
(forms from capabilities, jobs, history, versioned outputs), ``ui/`` renders the model and forwards
intents, ``hosts/`` adapts Nuke, Blender or a standalone window. Nothing here imports torch; only
``hosts/nuke_host.py`` and ``hosts/blender_host.py`` import their host's module.
"""
