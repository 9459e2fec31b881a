"""Example strategies referenced from the README. The name is one no installed package
uses (avalanche-lib installs a top-level ``examples``), so a dotted path finds this one."""
