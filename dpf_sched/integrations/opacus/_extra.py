"""Imported first by the package: without torch or opacus, importing :mod:`dpf_sched.integrations.opacus` raises
:class:`~dpf_sched.extras.MissingExtraError` (``pip install 'dpf-sched[opacus]'``), not ``ModuleNotFoundError``."""

from dpf_sched.extras import require_extra

require_extra("opacus")
