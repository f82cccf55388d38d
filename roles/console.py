"""What a person sees: the node's coloured console lines, and one-line usage errors.

Shared by node.py and peer_client.py.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import NoReturn

import colorama


class OneLineErrorParser(argparse.ArgumentParser):
    """A bad option is one line on stderr and exit code 2, not a usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


TAG_COLOURS = {
    "STARTING": colorama.Fore.CYAN, "LISTENING": colorama.Fore.CYAN, "STOPPING": colorama.Fore.CYAN,
    "STOPPED": colorama.Fore.CYAN, "NEW CONNECTION": colorama.Fore.GREEN, "HANDSHAKE": colorama.Fore.GREEN,
    "CONNECT": colorama.Fore.GREEN, "ACTIVE CONNECTIONS": colorama.Fore.BLUE,
    "DISCONNECTED": colorama.Fore.YELLOW, "GOODBYE": colorama.Fore.YELLOW,
}
LEVEL_COLOURS = {logging.WARNING: colorama.Fore.YELLOW, logging.ERROR: colorama.Fore.RED,
                 logging.CRITICAL: colorama.Fore.RED}
CHAT_COLOUR = colorama.Style.BRIGHT  # `[host:port] text` lines: what people typed


class ConsoleFormatter(logging.Formatter):
    """The lecture's `[TAG] text` lines, one per event, coloured by kind."""

    def __init__(self, colour: bool) -> None:
        super().__init__()
        self.colour = colour

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        if not self.colour:
            return f"{stamp} {text}"
        tag = text[1:text.find("]")] if text.startswith("[") and "]" in text else ""
        colour = LEVEL_COLOURS.get(record.levelno) or TAG_COLOURS.get(tag, CHAT_COLOUR if tag else "")
        return f"{colorama.Style.DIM}{stamp}{colorama.Style.RESET_ALL} {colour}{text}{colorama.Style.RESET_ALL}"


def configure_logging(level: str, colour: bool) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(ConsoleFormatter(colour))
    # The logging HOWTO's "Optimization": no caller lookup (a walk up the stack) and no thread or
    # process names for each line, since ConsoleFormatter prints none of them.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    root = logging.getLogger("epscoin")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
