"""Every command is `python -m mimo_jax.<verb>` and the console script `mimo-<verb>`, defines its
absl flags only when run, and is listed in the README's Commands section."""

import importlib
import os
import re
import tomllib

from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _scripts() -> dict[str, str]:
  with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    return tomllib.load(f)["project"]["scripts"]


def _verb(target: str) -> str:
  """'mimo_jax.train.__main__:console' -> 'train' (what follows `python -m mimo_jax.`)."""
  module = target.split(":")[0].removesuffix(".__main__")
  assert module.startswith("mimo_jax.") and module.count(".") == 1, target
  return module.split(".")[1]


def test_console_scripts_are_the_python_m_commands_and_define_flags_only_when_run():
  before = set(flags.FLAGS)
  for script, target in _scripts().items():
    assert script == "mimo-" + _verb(target).replace("_", "-"), (script, target)
    module_name, function = target.split(":")
    module = importlib.import_module(module_name)
    assert function == "console" and callable(module.console), target
    assert callable(module.define_flags) and callable(module.main), target
  # Importing a command adds none of its flags to another program (libraries may add theirs).
  added = set(flags.FLAGS) - before
  assert not [name for name in added
              if flags.FLAGS.find_module_defining_flag(name).startswith("mimo_jax")]


def test_readme_commands_section_names_exactly_the_commands():
  with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    readme = f.read()
  section = readme.split("\n## Commands\n", 1)[1].split("\n## ", 1)[0]
  named = set(re.findall(r"python -m mimo_jax\.(\w+)", section))
  assert named == {_verb(t) for t in _scripts().values()}
  for script in _scripts():
    assert script in section, script
