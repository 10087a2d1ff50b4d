"""Process supervision of the embedded set-up, apart from configuration.

- `run`: the `./run` command: prepare what is missing, start every process, stop them on Ctrl-C.
- `processes`: start and stop Redis, the model server and friends (also used by test fixtures).
"""
