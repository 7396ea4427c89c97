"""The tools: one package each (pytracer/tools/<name>/), with its front end in <name>/cli.py."""
