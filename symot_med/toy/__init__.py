"""The 2-D toy experiments of SyMOT-Flow, checked against exact discrete optimal transport.

Modules: ``datasets`` (the four seeded pairs), ``methods`` (the losses of SyMOT-Flow, its two
ablations and SWOT-Flow), ``train`` (one shared training budget), ``evaluate`` (transport
cost, report MMD, exact OT with POT, noise floor), ``run`` (jobs in worker processes),
``report`` and ``figures`` (tables, acceptance checks, page), ``paper`` (published numbers).
The command ``symot-med toy`` runs them.
"""
