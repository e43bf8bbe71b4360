"""
txmail's tests, run by trial.

Hypothesis's timing checks (a deadline per example, "too slow" to
generate) are off for every property test: they measure the machine's
load, not the code (two trial workers on two cores made them fail).
"""

from hypothesis import HealthCheck, settings

settings.register_profile("txmail", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("txmail")
