"""``provision bench``: prompt-processing and generation speed, directly and through the gateway.

``prompt`` builds a realistic coding-agent request, ``measure`` (stdlib only) runs in the
container against llama-server and the gateway, ``stats`` summarizes the runs, ``report``
makes the JSON and the table, ``runner`` ties them to a host file over SSH.
"""
