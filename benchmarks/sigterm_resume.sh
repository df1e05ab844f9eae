#!/usr/bin/env bash
# Uninterrupted default run vs the same run killed with SIGTERM mid-way and resumed.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
A=${WORKDIR:-runs}/sigterm_full; B=${WORKDIR:-runs}/sigterm_killed
rm -rf $A $B; mkdir -p "$(dirname $A)"
/usr/bin/time -f "uninterrupted wall %e s" $PY run.py --config configs/cnn.py --workdir $A --config.train.progress=False 2>&1 | grep -v "^[WI][0-9]" | tail -3
$PY run.py --config configs/cnn.py --workdir $B --config.train.progress=False > $B.log 2>&1 &
pid=$!
sleep ${KILL_AFTER:-100}
kill -TERM $pid; wait $pid; echo "killed run exit code $?"; tail -2 $B.log
ls $B/checkpoints
$PY run.py --config configs/cnn.py --workdir $B --config.train.progress=False 2>&1 | grep -v "^[WI][0-9]" | tail -3
$PY - <<PYEOF
import json
a=json.load(open('$A/run.json')); b=json.load(open('$B/run.json'))
print('uninterrupted', a['final_params_sha256'], a['final_metrics'])
print('resumed from', b['resumed_from_step'], b['final_params_sha256'], b['final_metrics'])
print('EQUAL' if a['final_params_sha256']==b['final_params_sha256'] else 'DIFFERENT')
PYEOF
