"""The fixed keyword-spotting split and label order: data files only (see README.md here).

A package so that an installed ``tinyml-mqtt`` carries the files and setuptools finds them.
"""
