"""Integrations of the scheduler with training frameworks (optional extras).

Nothing here is imported by ``import dpf_sched`` or by this package: each integration is a module or package
of its own that imports its framework (torch, opacus, ...) and is loaded only when asked for, e.g.
``from dpf_sched.integrations.opacus import BudgetedPrivacyEngine`` (needs the ``opacus`` extra).

Two modules serve jobs of any framework and import no framework: :mod:`dpf_sched.integrations.charge` charges a
dp-accounting ``DpEvent`` (or a Rényi curve) against a claim through any budget client, and
:mod:`dpf_sched.integrations.sweep` runs a hyperparameter sweep under one claim, every trial charged.
"""
