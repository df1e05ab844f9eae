"""The docs cannot rot: every `python run.py ...` command in README.md, docs/ and the configs'
docstrings names a config file that exists, a preset it has, a mode run.py knows and
--config.* keys that the config holds."""

import ast
import glob
import os
import re
import shlex

import pytest

from conftest import ROOT
from jaxvision import cli

_COMMAND = re.compile(r'python3? run\.py\b[^`|;&#"\n]*')


def _texts():
  for path in ['README.md', *sorted(glob.glob('docs/**/*.md', root_dir=ROOT, recursive=True))]:
    with open(os.path.join(ROOT, path), encoding='utf-8') as f:
      yield path, f.read()
  for path in sorted(glob.glob('configs/*.py', root_dir=ROOT)):
    with open(os.path.join(ROOT, path), encoding='utf-8') as f:
      yield path, ast.get_docstring(ast.parse(f.read())) or ''


def _commands():
  out = []
  for path, text in _texts():
    text = re.sub(r'\\\n\s*', ' ', text)  # shell line continuations
    out += [(path, m.group(0).strip()) for m in _COMMAND.finditer(text)]
  return out


COMMANDS = _commands()


def test_the_docs_show_commands():
  assert len(COMMANDS) >= 30 and any(path == 'README.md' for path, _ in COMMANDS)


@pytest.mark.parametrize('path, command', COMMANDS, ids=[f'{p}: {c}' for p, c in COMMANDS])
def test_a_documented_command_names_what_exists(path, command):
  args = shlex.split(command)[2:]
  config_arg = cli.config_arg_of(args)
  assert config_arg, f'{path}: {command}: no --config'
  cwd = os.getcwd()
  os.chdir(ROOT)
  try:
    config, problem = cli.load_config_file(config_arg)
  finally:
    os.chdir(cwd)
  assert problem is None, f'{path}: {command}: {problem}'
  for i, arg in enumerate(args):
    if arg.startswith('--config.'):
      message = cli.unknown_override(['run.py', arg], config)
      assert message is None, f'{path}: {command}: {message}'
    if arg == '--mode' or arg.startswith('--mode='):
      mode = arg.split('=', 1)[1] if '=' in arg else args[i + 1]
      assert mode in cli.MODES, f'{path}: {command}: --mode {mode}'
