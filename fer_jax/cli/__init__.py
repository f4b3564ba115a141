"""The commands: each module parses its flags and calls the library (`main(argv=None)`).

`python -m fer_jax.NAME` runs `fer_jax.cli.NAME.main`; commands never import each other,
and nothing outside this package imports them.
"""
