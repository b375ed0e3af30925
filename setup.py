"""Build of the C extensions, agent.relabel._walker and agent.parsing._yaml; everything else is declared in
pyproject.toml. The YAML reader is optional: without libyaml's headers the install goes on without it, and YAML
is read through PyYAML (agent/parsing/bounded.py says so once on stderr)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "agent.relabel._walker",
            sources=["agent/relabel/_walker.c"],
            depends=["agent/relabel/_xattr.h"],
            extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter",
                                "-Wno-missing-field-initializers", "-Wno-cast-function-type"],
            libraries=["pthread"],
        ),
        Extension(
            "agent.parsing._yaml",
            sources=["agent/parsing/_yaml.c"],
            extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter",
                                "-Wno-missing-field-initializers"],
            libraries=["yaml"],
            optional=True,
        ),
    ],
)
