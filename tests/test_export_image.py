"""The container images: the repository's Dockerfile (the plait base image), the search example's
executor image, and the executor-image pattern in docs/production.md, linted here (they are not
built in the tests: there is no Docker engine)."""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from plait.export import DEFAULT_IMAGE

ROOT = Path(__file__).resolve().parent.parent
KNOWN = {
    "FROM", "ARG", "ENV", "RUN", "COPY", "ADD", "WORKDIR", "USER", "EXPOSE", "HEALTHCHECK",
    "ENTRYPOINT", "CMD", "LABEL", "VOLUME", "STOPSIGNAL", "SHELL", "ONBUILD",
}  # fmt: skip


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


def parse(text: str) -> list[Instruction]:
    """Dockerfile instructions: comments dropped, continuation lines joined."""
    out: list[Instruction] = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        out.append(Instruction(keyword.upper(), args.strip(), start))
        pending = ""
    assert not pending, "a continuation line ends the file"
    return out


def exec_form(instruction: Instruction) -> list[str]:
    args = instruction.args
    if instruction.keyword == "HEALTHCHECK":
        args = args.split(" CMD ", 1)[1]
    try:
        value = json.loads(args)
    except ValueError:
        pytest.fail(f"line {instruction.line}: {instruction.keyword} must use the exec form (a JSON list)")
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


def base_images(instructions: list[Instruction]) -> list[str]:
    args = {}
    images = []
    for ins in instructions:
        if ins.keyword == "ARG" and "=" in ins.args:
            name, _, value = ins.args.partition("=")
            args[name] = value
        if ins.keyword == "FROM":
            image = ins.args.split()[0]
            images.append(re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), image))
    return images


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    last = max(i for i, ins in enumerate(instructions) if ins.keyword == "FROM")
    return instructions[last:]


def check_common(instructions: list[Instruction], *, inherits_user: bool = False) -> None:
    """``inherits_user``: built FROM the plait base image, which already runs as its user."""
    for ins in instructions:
        assert ins.keyword in KNOWN, f"line {ins.line}: unknown instruction {ins.keyword}"
        assert ins.keyword != "ADD", f"line {ins.line}: COPY, not ADD (no remote or archive magic)"
        if ins.keyword == "RUN" and "pip install" in ins.args:
            assert "--no-cache-dir" in ins.args, f"line {ins.line}: pip install --no-cache-dir"
        assert "sudo " not in ins.args
    for image in base_images(instructions):
        tag = image.partition(":")[2]
        assert tag and tag != "latest" and re.search(r"\d", tag), f"base image {image!r} is not pinned"
    stage = final_stage(instructions)
    keywords = [ins.keyword for ins in stage]
    assert keywords.count("ENTRYPOINT") == 1
    users = [ins.args for ins in stage if ins.keyword == "USER"]
    if inherits_user and not users:
        return
    assert users, "the image must not run as root: set USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "USER must be a numeric non-root uid (runAsNonRoot checks it)"
    assert len(keywords) - keywords[::-1].index("USER") - 1 < keywords.index("ENTRYPOINT")


def copied_sources(instructions: list[Instruction]) -> list[str]:
    sources = []
    for ins in instructions:
        if ins.keyword == "COPY" and "--from=" not in ins.args:
            parts = [p for p in ins.args.split() if not p.startswith("--")]
            sources += parts[:-1]
    return sources


def test_the_base_image_dockerfile() -> None:
    instructions = parse((ROOT / "Dockerfile").read_text())
    check_common(instructions)
    stage = final_stage(instructions)
    entrypoint = next(ins for ins in stage if ins.keyword == "ENTRYPOINT")
    assert exec_form(entrypoint) == ["plait"]
    healthcheck = next(ins for ins in stage if ins.keyword == "HEALTHCHECK")
    assert exec_form(healthcheck)[:2] == ["plait", "ping"]
    assert any(ins.keyword == "EXPOSE" and "8080" in ins.args for ins in stage)
    # The Python it is built on satisfies plait's requires-python.
    (image,) = set(base_images(instructions))
    version = re.match(r"python:(\d+)\.(\d+)", image)
    assert version, image
    required = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    minimum = tuple(int(x) for x in required.removeprefix(">=").split("."))
    assert (int(version.group(1)), int(version.group(2))) >= minimum
    # What it copies exists, and .dockerignore does not leave it out of the build context.
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip()[:1] not in "#"
    }
    for source in copied_sources(instructions):
        assert (ROOT / source).exists(), source
        assert source not in ignored, source


def test_the_search_example_executor_image() -> None:
    folder = ROOT / "examples" / "search"
    instructions = parse((folder / "Dockerfile").read_text())
    check_common(instructions, inherits_user=True)
    assert base_images(instructions) == [DEFAULT_IMAGE]
    entrypoint = exec_form(next(ins for ins in instructions if ins.keyword == "ENTRYPOINT"))
    assert entrypoint[:3] == ["plait", "executor", "--uses"]
    for source in copied_sources(instructions):
        assert (folder / source).exists(), source


def test_the_documented_executor_image_pattern() -> None:
    text = (ROOT / "docs" / "production.md").read_text()
    blocks = re.findall(r"```dockerfile\n(.*?)```", text, flags=re.S)
    assert blocks, "docs/production.md shows an executor image"
    for block in blocks:
        instructions = parse(block)
        if not any(ins.keyword == "ENTRYPOINT" for ins in instructions):
            continue
        check_common(instructions, inherits_user=True)  # a USER root to install must be undone
        assert base_images(instructions)[0].startswith("plait:")
        entrypoint = exec_form(next(ins for ins in instructions if ins.keyword == "ENTRYPOINT"))
        assert entrypoint[:2] == ["plait", "executor"]
