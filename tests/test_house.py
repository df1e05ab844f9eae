"""The house rules: dependencies point one way, every module imports alone, no import hides in a
function, and the formatter and linter pass."""

import ast
import concurrent.futures
import os
import pathlib
import subprocess
import sys

import pytest

from conftest import ROOT

PACKAGE = os.path.join(ROOT, 'jaxvision')
VENV_BIN = os.path.dirname(sys.executable)


def _modules() -> dict[str, str]:
  """{'jaxvision.data.pipeline': path} of every module of the package."""
  out = {}
  for folder, _, files in os.walk(PACKAGE):
    for name in files:
      if name.endswith('.py'):
        path = os.path.join(folder, name)
        parts = os.path.relpath(path, ROOT)[: -len('.py')].split(os.sep)
        out['.'.join(parts[:-1] if parts[-1] == '__init__' else parts)] = path
  return out


MODULES = _modules()


def _parse(path: str) -> ast.Module:
  return ast.parse(pathlib.Path(path).read_text(encoding='utf-8'))


def _imported(tree, modules) -> set[str]:
  """The jaxvision modules a module's code imports by name (`import a.b`, `from a import b`)."""
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      out |= {a.name for a in node.names if a.name in modules}
    elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith('jaxvision'):
      for alias in node.names:
        full = f'{node.module}.{alias.name}'
        out.add(full if full in modules else node.module)
  return out


def test_there_is_no_import_cycle_inside_jaxvision():
  graph = {m: _imported(_parse(p), MODULES) - {m} for m, p in MODULES.items()}
  # Tarjan's strongly connected components: a cycle is a component of more than one module.
  index, low, stack, on_stack, cycles = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in graph[v]:
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        cycles.append(sorted(component))

  for v in graph:
    if v not in index:
      visit(v)
  assert not cycles, cycles


def test_the_layers_point_one_way():
  """import-linter's layers contract in pyproject.toml: errors -> config, parallel, checkpoint,
  writers -> models, data, optim -> tasks -> evaluate -> the loop -> cli."""
  proc = subprocess.run(
    [os.path.join(VENV_BIN, 'lint-imports')], cwd=ROOT, capture_output=True, text=True, timeout=300
  )
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]


def test_no_jaxvision_module_imports_inside_a_function():
  found = []
  for module, path in MODULES.items():
    tree = _parse(path)
    for fn in ast.walk(tree):
      if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
        found += [
          f'{module}:{n.lineno}' for n in ast.walk(fn) if isinstance(n, ast.Import | ast.ImportFrom)
        ]
  assert not found, found


def _import_alone(module: str):
  return module, subprocess.run(
    [sys.executable, '-c', f'import {module}'],
    capture_output=True,
    text=True,
    timeout=300,
    env={**os.environ, 'JAX_PLATFORMS': 'cpu'},
  )


def test_every_module_imports_alone_in_a_fresh_interpreter():
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    results = list(pool.map(_import_alone, sorted(MODULES)))
  failed = {m: p.stderr.strip().splitlines()[-1] for m, p in results if p.returncode}
  assert not failed, failed


@pytest.mark.parametrize('command', [['check'], ['format', '--check']])
def test_ruff_passes(command):
  proc = subprocess.run(
    [os.path.join(VENV_BIN, 'ruff'), *command, '.'], cwd=ROOT, capture_output=True, text=True
  )
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-1000:]


@pytest.mark.xdist_group('house')
def test_xdist_groups_reach_the_scheduler(request):
  """Under pytest-xdist's loadgroup (pyproject.toml's addopts) a test's xdist_group is a suffix of
  its node id, which is what sends a group to one worker; pytest 9.2 with xdist 3.8 drops it, and
  the jax.distributed tests of the 'multiprocess' group then run side by side."""
  if not getattr(request.config.option, 'loadgroup', False):  # set on xdist's workers
    pytest.skip('not under pytest-xdist --dist loadgroup')
  assert request.node.nodeid.endswith('@house'), request.node.nodeid
