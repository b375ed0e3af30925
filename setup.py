"""Build of the one C extension, agent.relabel._walker; everything else is declared in pyproject.toml."""

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
        )
    ],
)
