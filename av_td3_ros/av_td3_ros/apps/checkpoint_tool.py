"""
checkpoint_tool: inspect, export and convert checkpoints from the command line.

    checkpoint_tool inspect FILE        JSON summary (format, version, total_it, architecture,
                                        observation spec, sha256) of a v1, legacy or policy file
    checkpoint_tool export FILE OUT     policy export (safetensors) of a checkpoint
    checkpoint_tool convert LEGACY OUT  legacy av_td3_system checkpoint -> v1 checkpoint

Exit status 0 on success; 1 with one ``error: ...`` line on stderr for a refused file.
"""

from __future__ import annotations

import argparse
import json
import sys

from av_td3_ros.formats.checkpoint import (
    CheckpointError, convert_legacy, export_policy_file, inspect_checkpoint)


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser (subcommands inspect, export, convert)."""
    parser = argparse.ArgumentParser(
        prog='checkpoint_tool', description='Inspect, export and convert av_td3 checkpoints.')
    sub = parser.add_subparsers(dest='command', required=True)
    inspect = sub.add_parser('inspect', help='print a JSON summary of a checkpoint')
    inspect.add_argument('file')
    export = sub.add_parser('export', help='write the policy export (safetensors)')
    export.add_argument('file')
    export.add_argument('out')
    convert = sub.add_parser('convert', help='convert a legacy checkpoint to v1')
    convert.add_argument('legacy')
    convert.add_argument('out')
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the tool; return the exit status."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == 'inspect':
            result = inspect_checkpoint(args.file)
        elif args.command == 'export':
            result = vars(export_policy_file(args.file, args.out))
        else:
            result = vars(convert_legacy(args.legacy, args.out))
    except (CheckpointError, OSError, ValueError) as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0


if __name__ == '__main__':
    sys.exit(main())
