from lifelong.platform.cli import entry

entry()
