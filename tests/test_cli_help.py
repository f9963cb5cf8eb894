"""`cinegen generate PIPELINE --help` reads well for every pipeline: it prints (argparse %-formats help, so a
"70%" in an option's help once made `upscale --help` crash), no flag is offered twice, every option with a
default says it, and an enum's choices are listed."""
from __future__ import annotations

import re

import pytest

from cinegen.common.params import PIPELINE_PARAMS, CommonParams, describe
from cinegen.server.cli import build_parser


def _help(capsys, pipeline: str) -> str:
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args(["generate", pipeline, "--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


def _option_help(text: str, option: str) -> str:
    """The help paragraph of one option (its line and the indented lines under it), joined."""
    match = re.search(rf"^  {re.escape(option)}\b.*?(?=^  -|\Z)", text, re.S | re.M)
    assert match, f"{option} is not in the help"
    return " ".join(match.group(0).split())


@pytest.mark.parametrize("pipeline", list(PIPELINE_PARAMS))
def test_each_pipelines_help_prints_each_flag_once_with_its_default_and_choices(capsys, pipeline):
    text = _help(capsys, pipeline)
    flags = re.findall(r"^  (--[a-z0-9-]+)", text, re.M)
    assert len(flags) == len(set(flags)), sorted({f for f in flags if flags.count(f) > 1})
    for d in describe(CommonParams, "common") + describe(PIPELINE_PARAMS[pipeline], pipeline):
        if not d.cli:
            continue
        paragraph = _option_help(text, d.option)
        if d.type == "enum":
            assert "{" + ",".join(d.choices) + "}" in paragraph, d.option
        if d.default not in (None, "", []) and "default" not in d.help.lower():
            shown = ("on" if d.default else "off") if isinstance(d.default, bool) else str(d.default)
            assert f"Default: {shown}." in paragraph, d.option
        if d.type == "model":
            assert f"{d.option} MODEL" in paragraph, d.option
