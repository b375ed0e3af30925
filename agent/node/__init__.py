"""The only code that reads the node: libselinux, the containers contexts files, mountinfo, which roots a walk must
refuse."""
