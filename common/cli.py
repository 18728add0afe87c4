"""The command line of every script, from its config dataclass: one `--flag` per field with its help line, grouped
in --help, and flags a script does not take refused in one line. A leaf module: argparse and dataclasses only.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys

from common.errors import UserError


def build_parser(config_class, description: str = "", explicit_only: bool = False) -> argparse.ArgumentParser:
    """argparse from a config dataclass: one `--flag` per field, its help from the field's metadata, under the
    heading of its group (a field whose metadata names a `group` starts it; the fields after it follow). A field the
    class lists in NOT_APPLICABLE is no flag of its script: left out of --help and refused if given. With
    `explicit_only` the parsed namespace holds only the flags actually given (for --resume checks)."""
    usage = "%(prog)s [options]" + "".join(
        f" [{f.name.upper()} ...]" if f.metadata["nargs"] else f" {f.name.upper()}"  # a list, or one positional
        for f in dataclasses.fields(config_class)
        if "nargs" in f.metadata
    )
    parser = OneLineParser(description=description, usage=usage, formatter_class=HelpFormatter, allow_abbrev=False)
    module = vars(sys.modules[config_class.__module__])
    not_applicable = getattr(config_class, "NOT_APPLICABLE", {})
    groups, group, switches = field_groups(config_class), parser, []
    for field in dataclasses.fields(config_class):
        flag = "--" + field.name.replace("_", "-")
        if field.name in not_applicable:
            parser.add_argument(flag, nargs="?", action=NotApplicable, const=not_applicable[field.name],
                                default=argparse.SUPPRESS, help=argparse.SUPPRESS)  # fmt: skip
            continue
        if field.name in groups:
            group = parser.add_argument_group(groups[field.name])
        kind = field.type if isinstance(field.type, type) else eval(field.type, module)
        options = {"help": field.metadata.get("help", "") + default_note(field.default, kind)}
        options["default"] = argparse.SUPPRESS if explicit_only else field.default
        if "nargs" in field.metadata:  # a positional list, e.g. evaluate.py's run folders
            parser.add_argument(field.name, nargs=field.metadata["nargs"], help=options["help"])
            continue
        if kind is bool and field.name.startswith("no_"):  # --no-teacher: a switch, never --no-no-teacher
            assert field.default is False, f"{field.name}: a no_ switch is off by default"
            group.add_argument(flag, action="store_true", **options)
            continue
        if kind is bool and field.default is False:  # a switch: --amp; --no-amp is accepted but not listed
            group.add_argument(flag, action="store_true", **options)
            switches.append(flag)
            group.add_argument("--no-" + flag[2:], dest=field.name, action="store_false", default=options["default"],
                               help=argparse.SUPPRESS)  # fmt: skip
            continue
        if kind is bool:  # on by default: --normalize-reward, --no-normalize-reward
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **options)
            continue
        scalar = next((t for t in (int, float, str) if t is kind or t in getattr(kind, "__args__", ())), str)
        if "choices" in field.metadata:
            options["choices"] = field.metadata["choices"]
        else:
            default_metavar = {int: "N", float: "X"}.get(scalar, field.name.split("_")[-1].upper())
            options["metavar"] = field.metadata.get("metavar", default_metavar)
        group.add_argument(flag, type=scalar, **options)
    if switches:  # their off forms are accepted but not listed: said once here
        parser.epilog = f"Each switch also takes its off form: {switches[0]} and --no-{switches[0][2:]}."
    return parser


def field_groups(config_class) -> dict[str, str]:
    """`{field name: group}` for the fields that start a --help group, in this class or one it extends (a subclass
    that redefines a field keeps its parent's place and group)."""
    starts = {}
    for cls in reversed(config_class.__mro__):
        if dataclasses.is_dataclass(cls):
            starts.update({f.name: f.metadata["group"] for f in dataclasses.fields(cls) if "group" in f.metadata})
    return starts


def default_note(default, kind) -> str:
    """` (default: X)` where the default says something: not for None or "", and a switch only when it is on."""
    if kind is bool:
        return " (default: on)" if default is True else ""
    if default is None or default == "" or default is dataclasses.MISSING:
        return ""
    return f" (default: {default})"


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The docstring's examples as written, and the help column wide enough for most flags."""

    def __init__(self, prog: str):
        super().__init__(prog, max_help_position=30)


class NotApplicable(argparse.Action):
    """A field that is no flag of this script (e.g. a pacing flag of the RL script): one line saying why."""

    def __call__(self, parser, namespace, values, option_string=None):
        raise UserError(f"{option_string} does not apply to {parser.prog}: {self.const}.")


class OneLineParser(argparse.ArgumentParser):
    """A flag argparse cannot read is a UserError: one line and exit code 2, not the whole usage text."""

    def error(self, message: str):
        raise UserError(f"{message}; see --help.")


def parse_config(config_class, argv=None, description: str = ""):
    return config_class(**vars(build_parser(config_class, description).parse_args(argv)))


def field(default, help: str, **metadata):
    """A config field with its --help line; `group="..."` starts a --help group at this field."""
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


def config_dict(config) -> dict:
    return dataclasses.asdict(config)


def command_line(config_class, values: dict, script: str) -> str:
    """`python SCRIPT --flag value ...` that rebuilds the saved config `values` (a run's config.json): the flags whose
    value differs from the default; --resume, --overwrite and fields that are no flag of the script are left out."""
    argv = ["python", script]
    skipped = {"resume", "overwrite", *getattr(config_class, "NOT_APPLICABLE", {})}
    for field in dataclasses.fields(config_class):
        if field.name in skipped or field.name not in values or "nargs" in field.metadata:
            continue
        value, flag = values[field.name], "--" + field.name.replace("_", "-")
        if value == field.default or value is None:
            continue
        if isinstance(value, bool):  # a switch: --amp; one on by default: --no-normalize-reward
            argv.append(flag if value else "--no-" + flag[2:])
        else:
            argv += [flag, str(value)]
    return shlex.join(argv)
