"""The workflow service's modules; `workflow.py` at the project root is the front door."""
