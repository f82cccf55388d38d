"""Black-box conformance checks of docs/protocol.md, over raw sockets only.

    python -m pytest tests/conformance                      # starts this project's node.py
    python -m pytest tests/conformance --target HOST:PORT   # any running implementation

See tests/conformance/conftest.py for the options.
"""
