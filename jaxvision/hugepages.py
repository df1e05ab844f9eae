"""Transparent huge pages for the process's malloc, the default of `run.py` on Linux.

XLA:CPU allocates each step's scratch buffers (tens to hundreds of MiB) with malloc; glibc serves
blocks over 32 MiB with fresh mmaps, so every step faults its scratch memory in 4 KiB pages (the
LSTM's step: ~29,000 faults, 45-57 ms of kernel time). glibc >= 2.35's tunable
`glibc.malloc.hugetlb=1` asks for transparent huge pages on malloc's memory instead (the kernel's
`madvise` mode, the usual default), 512x fewer faults. Tunables are read when the process starts,
so `reexec` starts the interpreter again, same arguments and PID, with the tunable set: 1.2-1.3x
on the DCGAN's and the LSTM's steps on the 2-core machine (docs/performance.md). It imports
nothing heavy, so it can run before jax is imported.
"""

import os
import platform
import sys

TUNABLE = 'glibc.malloc.hugetlb=1'
OPT_OUT = 'JAXVISION_HUGEPAGES'  # =0: leave malloc as it is


def reexec() -> None:
  """Re-executes this process with `GLIBC_TUNABLES` asking for huge pages, where that applies.

  Does nothing (returns) off Linux or glibc, when `GLIBC_TUNABLES` already sets
  `glibc.malloc.hugetlb` (the re-executed process, or a user's own choice), or when
  `JAXVISION_HUGEPAGES=0`. Otherwise it does not return: `os.execv` replaces the interpreter with
  a new one (the same executable, interpreter options and arguments, `sys.orig_argv`).
  """
  if not sys.platform.startswith('linux') or platform.libc_ver()[0] != 'glibc':
    return
  tunables = os.environ.get('GLIBC_TUNABLES', '')
  if os.environ.get(OPT_OUT) == '0' or 'glibc.malloc.hugetlb' in tunables:
    return
  os.environ['GLIBC_TUNABLES'] = f'{tunables}:{TUNABLE}' if tunables else TUNABLE
  sys.stdout.flush()
  sys.stderr.flush()
  os.execv(sys.executable, sys.orig_argv)
