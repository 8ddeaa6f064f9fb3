"""Pure decisions on predictions: the per-photo rule, audits, the per-animal rule, and review
thresholds learnt from staff's decisions. No I/O. May import ``labeler.core`` and
``labeler.model``.
"""
