"""hareg's deterministic fault-injection simulator.

It runs the registry's own service layer (``hareg.registry.service.Registry``)
on a deterministic event loop with virtual time (``loop``), against models
of etcd (``etcd_model``), the object store (``storage_model``) and the
network (``network``), with replicas that crash, pause and drift
(``replica``).  Clients (``workload``) push and pull while a nemesis
(``nemesis``) carries out the fault schedule a seed chose (``faults``); the
history and the models' commit logs are checked against the invariants of
docs/invariants.md (``checkers``, ``linearizability``, ``liveness``).  ``runner``
runs one seed; ``cli`` many; ``shrink`` minimizes a failing schedule.
See docs/simulation.md.
"""
