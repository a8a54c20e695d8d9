"""What the API and `pct` share, as in pve-manager/pve-container/pve-access-control: the config store,
config rules, permissions, tasks, storage, cluster."""
