"""Every command shown in README.md and docs/*.md runs here, so the docs cannot rot.

    python -m pytest tests/test_docs_commands.py        # as root; 40 to 70 s on two loaded cores

The convention, for whoever writes a page (docs/architecture.md, "Commands in the docs", says the same):

Blocks
- A fenced block whose info string starts with ``sh`` holds commands, one per line, exactly as a
  reader types them. A line ending in a backslash continues on the next; a heredoc (``<<'EOF'``)
  runs to its terminator line; blank lines and ``#`` comments are skipped. No ``$ `` prompts.
- Every other block is never run: ``text`` for output and transcripts, ``python``, ``json``,
  ``mermaid``, ... Every block must name its type, so that none is left unclassified.
- More words may follow the type (GitHub shows only the first):
  ``fresh``         (sh) stop the page's servers before this block, as a reader closes the
                    terminals of the previous section before reusing their addresses;
  ``NAME=VALUE``    (sh) the prose asks the reader to put VALUE for NAME, and so does the test
                    (``sh DATA_DIR=~/.epscoin/demo/node-2``);
  ``file=NAME``     (any type) the reader saves the block as NAME in the repository root, and later
                    commands of the page use it (``python file=mine.py``);
  ``output``        (``text output``, right after a sh block) every line of it must show up in what
                    that block's commands printed, or in the log of a server of the page; ``…``
                    matches any text, and a line that is only ``…`` is skipped.

How a page runs
- One test per sh block, with the id ``PAGE:LINE``. A page's blocks run in order, on a thread of
  the page's own (running one block alone runs the blocks before it first); PAGES_AT_ONCE pages run
  side by side. Each command runs in a fresh bash, from the root of a fresh copy of the working
  tree ("from this directory", as the pages say).
- Each page runs in a private network and mount namespace (root, with ``unshare``, ``nsenter`` and
  ``ip``): loopback only, with a /tmp and a HOME of its own. So the commands keep the documented
  addresses and paths exactly (127.0.0.1:5050, the demo's 127.0.0.2 to .6, /tmp/alice,
  ~/.epscoin), and collide with nothing else running on the machine. Where namespaces are not
  available, the page tests skip.
- A command must exit 0 within COMMAND_TIMEOUT seconds. A command that prints a listening line
  (``[LISTENING] Node is listening on`` or the demo's ``[DEMO] join with:``) is a server, which a
  reader leaves running in a terminal of its own: it keeps running, later blocks talk to it, and at
  the end of the page (or at a ``fresh`` block) it gets Ctrl-C (SIGINT) and must exit 0.
- ``pip install -e SPEC && REST`` is not re-run (it would rewrite the shared checkout's egg-info):
  the test checks that this interpreter holds this tree's epscoin and every requirement of SPEC,
  then runs REST. ``python -m pytest`` with no arguments is the whole suite, which cannot run inside
  itself: the test checks that .ci/run, the CI, runs exactly that line. ``python -m pytest ARGS``
  runs tests that this suite runs anyway: the test adds ``--collect-only -q``, so the paths, test
  ids and options it names must exist, and nothing is run twice.
- NOT_RUN names the commands that cannot run here, with the reason; KNOWN_BROKEN the commands known
  to fail, run as strict xfails. An entry whose command has left its page fails the lint test, so
  both lists stay current.
"""

from __future__ import annotations

import configparser
import importlib.metadata
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest
from packaging.requirements import Requirement

from tests.support import wait_until

ROOT = Path(__file__).resolve().parent.parent
PAGES = ["README.md"] + sorted(str(path.relative_to(ROOT)) for path in (ROOT / "docs").glob("*.md"))

COMMAND_TIMEOUT = 60.0  # seconds a command may take to exit (or, for a server, to listen)
STOP_TIMEOUT = 20.0  # seconds a server may take to exit after Ctrl-C (the demo stops five nodes)
LOG_WAIT = 5.0  # seconds an `output` line may take to appear in a server's log
PAGE_TIMEOUT = 600.0  # seconds a block's test waits for its page to get there
PAGES_AT_ONCE = 2  # pages run side by side: most of a page's time is waiting, but the machine has two cores
PAGE_SLOTS = threading.BoundedSemaphore(PAGES_AT_ONCE)
READY = re.compile(r"\[LISTENING\] Node is listening on |\[DEMO\] join with: ")
WHOLE_SUITE = re.compile(r"python -m pytest")  # no arguments: the whole suite
TEST_RUN = re.compile(r"\bpython -m pytest(?= )")  # with arguments: some of the suite's tests
PIP_INSTALL = re.compile(r"^pip install -e (\S+)(?: && (.+))?$", re.DOTALL)
HEREDOC = re.compile(r"<<-?\s*(['\"]?)(\w+)\1")
FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
# Where a page's private /tmp shows the copy of the tree, and its HOME.
NS_TMP = Path("/tmp")
NS_REPO = NS_TMP / "repo"
NS_HOME = NS_TMP / "home"

# (page, command): why it is not run here.
NOT_RUN: dict[tuple[str, str], str] = {}
# (page, command): why it fails today. Run as strict xfails, so a fix shows up at once.
KNOWN_BROKEN: dict[tuple[str, str], str] = {}


# -- reading the pages --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    page: str
    line: int  # of the opening fence, from 1
    info: tuple[str, ...]  # the info string's words: the type first
    body: tuple[str, ...]

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def kind(self) -> str:
        return self.info[0] if self.info else ""

    @property
    def is_commands(self) -> bool:
        return self.kind == "sh"

    @property
    def is_output(self) -> bool:
        return "output" in self.info[1:]

    @property
    def fresh(self) -> bool:
        return "fresh" in self.info[1:]

    @property
    def file_name(self) -> str | None:
        return next((word[5:] for word in self.info[1:] if word.startswith("file=")), None)

    @property
    def placeholders(self) -> dict[str, str]:
        return dict(word.split("=", 1) for word in self.info[1:] if "=" in word and not word.startswith("file="))

    def commands(self) -> list[str]:
        """The block's commands, placeholders filled in."""
        found = split_commands(self.body)
        for name, value in self.placeholders.items():
            found = [command.replace(name, value) for command in found]
        return found


def read_blocks(page: str) -> list[Block]:
    """Every fenced block of a Markdown page, in order."""
    lines = (ROOT / page).read_text().splitlines()
    blocks, index = [], 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        indent, fence = len(opening["indent"]), opening["fence"]
        body, index = [], index + 1
        start = index
        while index < len(lines) and not re.fullmatch(rf" *{re.escape(fence[0])}{{{len(fence)},}} *", lines[index]):
            body.append(lines[index][indent:] if lines[index][:indent].strip() == "" else lines[index])
            index += 1
        blocks.append(Block(page, start, tuple(opening["info"].split()), tuple(body)))
        index += 1  # past the closing fence
    return blocks


def split_commands(lines: tuple[str, ...]) -> list[str]:
    """A sh block's lines as commands: continuations joined, heredocs kept whole, comments dropped."""
    commands, index = [], 0
    while index < len(lines):
        line = lines[index]
        index += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        while line.endswith("\\") and index < len(lines):
            line = line[:-1] + lines[index].lstrip()
            index += 1
        terminator = heredoc_terminator(line)
        if terminator:
            body = [line]
            while index < len(lines):
                body.append(lines[index])
                index += 1
                if lines[index - 1].strip() == terminator:
                    break
            else:
                raise ValueError(f"heredoc {terminator} is not closed")
            line = "\n".join(body)
        commands.append(line.strip())
    return commands


def heredoc_terminator(line: str) -> str | None:
    """The word after an unquoted `<<` (`<<'EOF'`, `<<-EOF`), or None; `<<` inside quotes is text."""
    quote = None
    for index, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif line.startswith("<<", index) and not line.startswith("<<<", index) and line[index - 1:index] != "<":
            found = HEREDOC.match(line, index)
            return found[2] if found else None
    return None


ALL_BLOCKS = {page: read_blocks(page) for page in PAGES}
COMMAND_BLOCKS = [block for page in PAGES for block in ALL_BLOCKS[page] if block.is_commands]


# -- a page's namespace -----------------------------------------------------------------------------


class NamespaceUnavailable(Exception):
    """This machine cannot give the page a network and mount namespace of its own."""


class Sandbox:
    """A private network and mount namespace: loopback only, and a /tmp of its own.

    A holder process (`sleep`) keeps the namespace alive; every command enters it with nsenter.
    The host directory `root` is the namespace's /tmp; the interpreter's prefix, when it lives in
    the real /tmp (a venv there), is bound into it so that `python` still works.
    """

    def __init__(self, root: Path) -> None:
        for tool in ("unshare", "nsenter", "ip"):
            if shutil.which(tool) is None:
                raise NamespaceUnavailable(f"{tool} is not installed")
        self.root = root
        steps = ["ip link set lo up"]
        for prefix in sorted({Path(sys.prefix), Path(sys.base_prefix)}):
            if prefix.is_relative_to(NS_TMP):
                inside = root / prefix.relative_to(NS_TMP)
                inside.mkdir(parents=True, exist_ok=True)
                steps.append(f"mount --bind {shlex.quote(str(prefix))} {shlex.quote(str(inside))}")
        steps += [f"mount --rbind {shlex.quote(str(root))} {NS_TMP}", "echo ready", "exec sleep 86400"]
        self.holder = subprocess.Popen(
            ["unshare", "--net", "--mount", "--propagation", "private", "--", "sh", "-c", " && ".join(steps)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.holder.stdout is not None and self.holder.stderr is not None
        if self.holder.stdout.readline().strip() != "ready":
            error = self.holder.stderr.read().strip()
            self.holder.wait()
            raise NamespaceUnavailable(error or "unshare failed")

    def spawn(self, command: str, log: IO[str], env: dict[str, str]) -> subprocess.Popen:
        """Run one command line with bash in the namespace, from the copy of the tree, in its own session."""
        return subprocess.Popen(
            ["nsenter", f"--target={self.holder.pid}", "--net", "--mount", "--",
             "bash", "-c", f"cd {NS_REPO} || exit 97\n{command}"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def processes(self) -> list[int]:
        """Every process in the namespace but the holder: the commands and whatever they started."""
        mine = os.readlink(f"/proc/{self.holder.pid}/ns/net")
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != self.holder.pid:
                try:
                    if os.readlink(entry / "ns" / "net") == mine:
                        found.append(int(entry.name))
                except OSError:
                    pass  # gone, or not ours to read
        return found

    def close(self) -> None:
        """Kill what is left inside (a demo's nodes live in sessions of their own), then the holder."""
        for pid in self.processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.holder.kill()  # the namespace, its mounts and its loopback go with its last process
        self.holder.wait()
        for pipe in (self.holder.stdout, self.holder.stderr):
            if pipe is not None:
                pipe.close()


def command_env() -> dict[str, str]:
    """The reader's shell: this interpreter first on PATH, the namespace's HOME, output unbuffered as on a tty."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTEST_", "TMPDIR"))}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", HOME=str(NS_HOME),
               PYTHONPATH=str(NS_REPO), PYTHONUNBUFFERED="1")
    return env


def copy_tree(target: Path) -> None:
    ignore = shutil.ignore_patterns(".git", "__pycache__", ".pytest_cache", ".hypothesis", ".ruff_cache",
                                    "*.egg-info", "results")
    shutil.copytree(ROOT, target, ignore=ignore)


# -- running a page -------------------------------------------------------------------------------


@dataclass
class Run:
    """One command started in the namespace, with its output in a file."""

    command: str
    process: subprocess.Popen
    log_path: Path
    log_file: IO[str]

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def exited(self) -> bool:
        return self.process.poll() is not None

    def signal_group(self, signum: int) -> None:
        try:
            os.killpg(self.process.pid, signum)  # its own session: the command and all it started
        except ProcessLookupError:
            pass

    def stop(self) -> int:
        """Ctrl-C, as the reader stops a server; SIGKILL if it does not stop within STOP_TIMEOUT."""
        if not self.exited():
            self.signal_group(signal.SIGINT)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.signal_group(signal.SIGKILL)
                self.process.wait()
        self.log_file.close()
        return self.process.returncode


class CommandFailed(AssertionError):
    pass


@dataclass
class PageRun:
    """A page's blocks run in order on a thread of their own, in one namespace, with the servers they started.

    Pages are independent (each has its own namespace), so up to PAGES_AT_ONCE run side by side; each
    block's test waits for that block's outcome and reports it.
    """

    page: str
    base: Path
    last_line: int  # the last block to run: the page's last selected one
    sandbox: Sandbox | None = None
    servers: list[Run] = field(default_factory=list)
    counter: int = 0
    outcomes: dict[int, BaseException | None] = field(default_factory=dict)  # block line -> what it raised
    finished: dict[int, threading.Event] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.finished = {block.line: threading.Event() for block in COMMAND_BLOCKS_BY_PAGE[self.page]}
        self.thread = threading.Thread(target=self.run_page, name=f"docs-{self.page}", daemon=True)

    @property
    def repo(self) -> Path:
        return self.base / "tmp" / "repo"

    def outcome(self, block: Block) -> BaseException | None:
        """Wait for the block to have run; the exception it raised (a failure, skip or xfail), or None."""
        if not self.finished[block.line].wait(PAGE_TIMEOUT):
            return AssertionError(f"{block.id} did not run within {PAGE_TIMEOUT:g} s")
        return self.outcomes[block.line]

    def run_page(self) -> None:
        with PAGE_SLOTS:
            try:
                self.start()
            except NamespaceUnavailable as error:
                skipped = pytest.skip.Exception(f"no private network namespace for the page's fixed addresses: {error}")
                self.settle_all(skipped)
                return
            except BaseException as error:  # noqa: BLE001 (reported by every block's test)
                self.settle_all(error)
                return
            for block in ALL_BLOCKS[self.page]:
                if block.line > self.last_line:
                    break
                if block.is_output:
                    continue  # checked with the sh block before it
                try:
                    self.run_block(block)
                    outcome: BaseException | None = None
                except BaseException as error:  # noqa: BLE001 (a failure, skip or xfail for the block's test)
                    outcome = error
                if block.is_commands:
                    if block.line == self.last_line:
                        outcome = self.stop_at_end(outcome)
                    self.outcomes[block.line] = outcome
                    self.finished[block.line].set()
            self.settle_all(AssertionError("not run: the page stopped before this block"))

    def start(self) -> None:
        root = self.base / "tmp"
        (root / "home").mkdir(parents=True)
        copy_tree(root / "repo")
        self.sandbox = Sandbox(root)

    def stop_at_end(self, outcome: BaseException | None) -> BaseException | None:
        """The end of the page: Ctrl-C in every terminal. A server that does not exit 0 fails the last block."""
        try:
            self.stop_servers()
        except CommandFailed as failure:
            skipped = isinstance(outcome, (pytest.skip.Exception, pytest.xfail.Exception))
            return failure if outcome is None or skipped else outcome  # a failure of the block itself comes first
        return outcome

    def settle_all(self, outcome: BaseException) -> None:
        """Every block not yet run gets this outcome."""
        for line, event in self.finished.items():
            if not event.is_set():
                self.outcomes[line] = outcome
                event.set()

    def run_block(self, block: Block) -> None:
        if block.file_name:
            (self.repo / block.file_name).write_text("\n".join(block.body) + "\n")
        if not block.is_commands:
            return
        if block.fresh:
            self.stop_servers()
        printed, not_run = [], []
        for command in block.commands():
            reason = NOT_RUN.get((self.page, command))
            if reason is None:
                printed.append(self.run_command(command))
            else:
                not_run.append(reason)
        expected = self.output_block_after(block)
        if expected is not None:
            self.check_output(expected, "\n".join(printed))
        if not_run:
            pytest.skip(f"not run: {'; '.join(not_run)}")

    def run_command(self, command: str) -> str:
        """Run one command (or start one server); what it printed."""
        pip = PIP_INSTALL.match(command)
        if pip:
            check_installed(shlex.split(pip[1])[0])
        rest = pip[2] if pip else command
        if rest is None:
            return ""
        if WHOLE_SUITE.fullmatch(rest):
            check_ci_runs(command)
            return ""
        if TEST_RUN.search(rest):  # this suite's own tests, which run in the suite anyway: collect only
            rest = TEST_RUN.sub(lambda found: f"{found[0]} --collect-only -q", rest, count=1)
        broken = KNOWN_BROKEN.get((self.page, command))
        try:
            printed = self.execute(rest)
        except CommandFailed:
            if broken is None:
                raise
            pytest.xfail(f"known broken: {broken}")
        if broken is not None:
            pytest.fail(f"KNOWN_BROKEN lists a command that works now (remove its entry): {command}", pytrace=False)
        return printed

    def execute(self, command: str) -> str:
        self.counter += 1
        log_path = self.base / f"command-{self.counter}.log"
        log_file = open(log_path, "w")  # noqa: SIM115 (open while the command runs; Run.stop closes it)
        assert self.sandbox is not None
        run = Run(command, self.sandbox.spawn(command, log_file, command_env()), log_path, log_file)
        try:
            wait_until(lambda: run.exited() or READY.search(run.output()), timeout=COMMAND_TIMEOUT, interval=0.05,
                       message=f"{command!r} to exit or listen")
        except AssertionError:
            run.signal_group(signal.SIGKILL)
            run.stop()
            raise CommandFailed(f"{command}\n  did not finish within {COMMAND_TIMEOUT:g} s:\n{tail(run.output())}")
        if not run.exited():
            self.servers.append(run)  # a server: it runs on, as in the reader's other terminal
            return run.output()
        code = run.stop()
        if code != 0:
            raise CommandFailed(f"{command}\n  exited with {code}:\n{tail(run.output())}")
        return run.output()

    def stop_servers(self) -> None:
        """Ctrl-C each server, the last started first; each must exit 0."""
        failures = []
        while self.servers:
            server = self.servers.pop()
            code = server.stop()
            if code != 0:
                failures.append(f"{server.command}\n  exited with {code} after Ctrl-C:\n{tail(server.output())}")
        if failures:
            raise CommandFailed("\n".join(failures))

    def output_block_after(self, block: Block) -> Block | None:
        blocks = ALL_BLOCKS[self.page]
        following = blocks[blocks.index(block) + 1:blocks.index(block) + 2]
        return following[0] if following and following[0].is_output else None

    def check_output(self, expected: Block, printed: str) -> None:
        """Each line of an `output` block must show up in what was printed, or soon in a server's log."""
        for line in expected.body:
            if line.strip() in ("", "…"):
                continue
            pattern = output_pattern(line)

            def appears(pattern: re.Pattern[str] = pattern) -> bool:
                return bool(pattern.search(printed)) or any(pattern.search(s.output()) for s in self.servers)

            wait_until(appears, timeout=LOG_WAIT, interval=0.05,
                       message=f"{line.strip()!r} (in {expected.id}) in the output or a server's log")

    def close(self) -> None:
        for server in self.servers:
            server.signal_group(signal.SIGKILL)
            server.stop()
        self.servers.clear()
        if self.sandbox is not None:
            self.sandbox.close()


COMMAND_BLOCKS_BY_PAGE = {page: [b for b in ALL_BLOCKS[page] if b.is_commands] for page in PAGES}


def output_pattern(line: str) -> re.Pattern[str]:
    """An `output` block's line as a pattern: the text itself, where `…` stands for anything."""
    return re.compile(".*?".join(re.escape(part) for part in line.strip().split("…")))


def tail(text: str, lines: int = 25) -> str:
    return "\n".join("    " + line for line in text.rstrip().splitlines()[-lines:])


def check_installed(spec: str) -> None:
    """What `pip install -e SPEC` leaves behind: this tree's epscoin and every requirement of SPEC."""
    assert spec.startswith("."), f"pip install -e {spec}: the docs install this tree, '.' or '.[extra]'"
    extras = re.findall(r"[\w-]+", spec[spec.find("[") + 1:spec.find("]")]) if "[" in spec else []
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    installed = importlib.metadata.version("epscoin")
    assert installed == setup["metadata"]["version"], f"epscoin {installed} is installed, this tree is " \
                                                      f"{setup['metadata']['version']}: run pip install -e {spec}"
    wanted = setup["options"]["install_requires"].split()
    for extra in extras:
        wanted += setup["options.extras_require"][extra].split()
    for text in wanted:
        requirement = Requirement(text)
        try:
            version = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            pytest.fail(f"{requirement.name} is not installed: run pip install -e {spec}", pytrace=False)
        assert requirement.specifier.contains(version, prereleases=True), \
            f"{requirement.name} {version} does not meet {requirement}: run pip install -e {spec}"


def check_ci_runs(command: str) -> None:
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert command in (line.strip() for line in ci), f".ci/run does not run the documented {command!r}"


# -- the tests ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def page_runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, PageRun]]:
    """Start every page that has a selected block, up to its last selected block; clean up at the end."""
    last: dict[str, int] = {}
    for item in request.session.items:
        block = getattr(item, "callspec", None) and item.callspec.params.get("block")
        if isinstance(block, Block):
            last[block.page] = max(last.get(block.page, 0), block.line)
    runs = {page: PageRun(page, tmp_path_factory.mktemp(re.sub(r"\W", "-", page)), line) for page, line in last.items()}
    for run in runs.values():
        run.thread.start()
    yield runs
    for run in runs.values():
        run.settle_all(AssertionError("the test session ended"))
    for run in runs.values():
        run.thread.join(timeout=STOP_TIMEOUT)
        run.close()


@pytest.mark.timeout(PAGE_TIMEOUT + 60)
@pytest.mark.parametrize("block", COMMAND_BLOCKS, ids=[block.id for block in COMMAND_BLOCKS])
def test_block(block: Block, page_runs: dict[str, PageRun]) -> None:
    outcome = page_runs[block.page].outcome(block)
    if outcome is not None:
        raise outcome


def test_every_block_names_its_type() -> None:
    """So that no command hides in an unmarked block: text, sh, python, mermaid, ..."""
    unnamed = [block.id for blocks in ALL_BLOCKS.values() for block in blocks if not block.kind]
    assert not unnamed, f"fenced blocks without an info string: {unnamed}"


def test_command_blocks_are_commands() -> None:
    problems = []
    for block in COMMAND_BLOCKS:
        try:
            commands = block.commands()
        except ValueError as error:
            problems.append(f"{block.id}: {error}")
            continue
        if not commands:
            problems.append(f"{block.id}: no command")
        problems += [f"{block.id}: a prompt in a sh block: {line!r} (use text for transcripts)"
                     for line in block.body if line.startswith("$ ")]
        problems += [f"{block.id}: placeholder {name} does not occur" for name in block.placeholders
                     if not any(name in line for line in block.body)]
    for blocks in ALL_BLOCKS.values():
        for index, block in enumerate(blocks):
            if block.is_output and (index == 0 or not blocks[index - 1].is_commands):
                problems.append(f"{block.id}: an output block must follow a sh block")
    assert not problems, "\n".join(problems)


def test_exception_lists_are_current() -> None:
    """NOT_RUN and KNOWN_BROKEN name commands that are still on their pages."""
    shown: set[tuple[str, str]] = set()
    for block in COMMAND_BLOCKS:
        try:
            shown.update((block.page, command) for command in block.commands())
        except ValueError:
            pass  # test_command_blocks_are_commands reports it
    stale = [entry for entry in (*NOT_RUN, *KNOWN_BROKEN) if entry not in shown]
    assert not stale, f"entries whose command is no longer in the docs: {stale}"


def test_split_commands() -> None:
    body = ("python node.py \\", "  --port 5051", "# a comment", "", "python - <<'EOF'", "print(1)", "EOF", "ls")
    assert split_commands(body) == ["python node.py --port 5051", "python - <<'EOF'\nprint(1)\nEOF", "ls"]
    with pytest.raises(ValueError):
        split_commands(("cat <<EOF", "never closed"))
    assert split_commands(("sqlite3 db 'select 1 << min(a, 12)'",)) == ["sqlite3 db 'select 1 << min(a, 12)'"]


def test_output_pattern() -> None:
    pattern = output_pattern('lecture node: ack {"id":"…"}  ')
    assert pattern.search('lecture node: ack {"id":"88bfb92869e96eaa"}')
    assert not pattern.search("lecture node: pong")
    assert output_pattern("a.b (c)").search("x a.b (c) y") and not output_pattern("a.b").search("axb")
