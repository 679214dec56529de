"""The local cluster: ``hareg cluster up`` and ``hareg cluster status``.

One supervisor process runs, on 127.0.0.1, every part of an HA deployment:
etcd members, an object store (SeaweedFS), N ``hareg serve`` replicas and
haproxy in front of them, and keeps them running the way the OpenShift Image
Registry Operator keeps its deployment (``managementState``, ``replicas``).

    spec.py        the layout: names, ports and paths under --dir (kept in layout.json)
    desired.py     the desired state from the user's file, and the replicas' configuration
    haproxy.py     the load balancer's configuration and process
    replica.py     one ``hareg serve`` child
    supervisor.py  start order, the monitor loop, cluster.json, SIGHUP, teardown
    status.py      conditions Available, Progressing, Degraded from what runs
    cli.py         the ``hareg cluster`` subcommands

The replicas and haproxy are :class:`hareg.processes.child.ChildProcess`
children, tied to the supervisor (PR_SET_PDEATHSIG) like the etcd members and
SeaweedFS, which live in :mod:`hareg.processes` beside them.
"""
