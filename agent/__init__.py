"""selinux-mount-agent: SELinux volume labelling for Kubernetes nodes, by kubelet's KEP-1710 rules."""

__version__ = "0.1.0"
