"""A small Dockerfile reader for the deploy tests (no container engine runs in CI).

It joins continuation lines, drops comments and splits the file into stages, which is all the
tests need to check the instructions the image depends on. As a command it prints what
tests/deploy/entrypoint_test.sh needs to start attnd the way the image does:

    python tests/deploy/dockerfile.py env Dockerfile          KEY=VALUE per line (final stage ENV)
    python tests/deploy/dockerfile.py healthcheck Dockerfile  the HEALTHCHECK's shell command
    python tests/deploy/dockerfile.py command Dockerfile      ENTRYPOINT + CMD, one word per line
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import sys


@dataclasses.dataclass
class Instruction:
    keyword: str  # upper case: FROM, RUN, ENV, ...
    args: str  # everything after the keyword, continuation lines joined with a space
    line: int  # 1-based line of the keyword


@dataclasses.dataclass
class Stage:
    base: str  # FROM's image
    name: str  # the AS name, or "" when unnamed
    instructions: list[Instruction]

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def one(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        if len(found) != 1:
            raise ValueError(f"stage {self.name or self.base}: expected one {keyword}, found {len(found)}")
        return found[0]


def parse_instructions(text: str) -> list[Instruction]:
    """Instructions in order. Comment lines (also inside a continuation) are dropped."""
    instructions: list[Instruction] = []
    pending = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1].rstrip() + " "
            continue
        pending += stripped
        keyword, _, args = pending.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip(), start))
        pending = ""
    if pending:
        raise ValueError(f"line {start}: continuation runs past the end of the file")
    return instructions


def parse_stages(text: str) -> tuple[list[Instruction], list[Stage]]:
    """(instructions before the first FROM, i.e. global ARGs; the stages)."""
    preamble: list[Instruction] = []
    stages: list[Stage] = []
    for instruction in parse_instructions(text):
        if instruction.keyword == "FROM":
            words = instruction.args.split()
            words = [w for w in words if not w.startswith("--platform")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else ""
            stages.append(Stage(words[0], name, []))
        elif stages:
            stages[-1].instructions.append(instruction)
        else:
            preamble.append(instruction)
    return preamble, stages


def is_exec_form(args: str) -> bool:
    return args.lstrip().startswith("[")


def exec_form(args: str) -> list[str]:
    words = json.loads(args)
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise ValueError(f"not a JSON array of strings: {args}")
    return words


def env_pairs(instruction: Instruction) -> dict[str, str]:
    """ENV KEY=VALUE [KEY=VALUE...] (the legacy 'ENV KEY VALUE' form is refused)."""
    pairs: dict[str, str] = {}
    for word in shlex.split(instruction.args):
        key, sep, value = word.partition("=")
        if not sep:
            raise ValueError(f"line {instruction.line}: ENV without '=': {instruction.args}")
        pairs[key] = value
    return pairs


def stage_env(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in stage.all("ENV"):
        env.update(env_pairs(instruction))
    return env


def healthcheck_command(stage: Stage) -> str:
    """The shell command of HEALTHCHECK [OPTIONS] CMD command (shell form)."""
    args = stage.one("HEALTHCHECK").args
    words = args.split()
    index = next(i for i, w in enumerate(words) if w.upper() == "CMD")
    command = " ".join(words[index + 1:])
    if is_exec_form(command):
        return shlex.join(exec_form(command))
    return command


def entrypoint_command(stage: Stage) -> list[str]:
    entrypoint = stage.one("ENTRYPOINT").args
    if not is_exec_form(entrypoint):
        raise ValueError("ENTRYPOINT must be in exec form (signals reach attnd directly)")
    words = exec_form(entrypoint)
    cmds = stage.all("CMD")
    if cmds:
        words += exec_form(cmds[-1].args)
    return words


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in ("env", "healthcheck", "command"):
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[2], encoding="utf-8") as f:
        _, stages = parse_stages(f.read())
    final = stages[-1]
    if argv[1] == "env":
        for key, value in stage_env(final).items():
            print(f"{key}={value}")
    elif argv[1] == "healthcheck":
        print(healthcheck_command(final))
    else:
        for word in entrypoint_command(final):
            print(word)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
