"""hareg's configuration: one YAML document shaped like the ``spec`` of the
OpenShift Image Registry Operator's ``configs.imageregistry.operator.openshift.io``
resource (camelCase keys as in OpenShift), plus hareg's own ``listen``,
``etcd`` and ``pruner`` sections.  ``docs/configuration.md`` describes every
field.

One module a job; import the one you need (this package imports none of them,
so the model and the cron parser can be used without loading YAML):

* ``model``: the typed model (``Config`` and its sections), ``ConfigError``.
* ``reader``: ``load_config`` (the YAML file and the ``HAREG_...`` variables).
* ``validation``: each section's checks, from raw data to a ``Config``.
* ``context``: where problems are recorded; typed access to a YAML mapping.
* ``fields``: every scalar field, its variable name and its documentation.
* ``render``: ``config_to_dict`` and ``defaults_yaml`` (``hareg config``).
* ``addresses``: ``split_host_port``, URL checks, ``advertised_url``.
* ``cron``: ``parse_cron`` and ``CronSchedule`` (the pruner's schedules).
* ``durations``: ``parse_duration`` and ``format_duration`` (Go's syntax).
"""
