"""The LXC side of a container (PVE::LXC + lxc itself): backend, rootfs, LXC config, devices, setup."""
