"""The simulated host: mount namespace and sshd, its packages (apt/dpkg/dkms), NVIDIA driver and faults."""
