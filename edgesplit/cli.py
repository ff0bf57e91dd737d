"""Dispatch `edgesplit <command>` to the side that owns it.

`edge`, `serve` and `demo` belong to runtime/ and start with numpy and one backend (a device has no
torch, click or toolchain); every other command is the toolchain's. Neither side imports the
other: this module is the only place that knows both. Python 3.6 syntax.
"""

import sys

RUNTIME_COMMANDS = ("edge", "serve", "demo")


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((word for word in argv if not word.startswith("-")), None)
    # building a bundle's TensorRT engines happens on the device, which has the runtime only
    if command in RUNTIME_COMMANDS or (command == "build-engines" and "--bundle" in argv):
        from runtime.cli import main as runtime_main

        return runtime_main(argv)
    try:
        from toolchain.cli import main as toolchain_main
    except ImportError as error:
        sys.exit("edgesplit {}: the toolchain is not installed here ({}); this install runs "
                 "`edgesplit edge` and `edgesplit serve`".format(command or "", error))
    return toolchain_main(args=argv, prog_name="edgesplit")


def build_engines_main():
    """`build-engines` is `edgesplit build-engines` under its own name."""
    return main(["build-engines"] + sys.argv[1:])
