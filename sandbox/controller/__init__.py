"""The sandbox's controller: moto's AWS control plane made to behave like the real services.

``loop.Controller`` wires the parts together (sandbox/server.py starts it); this package imports
none of them, so a test reading one part (``iam_eval``, ``cloudwatch_stats``) loads that part only.
"""
