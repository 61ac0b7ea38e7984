#!/usr/bin/env bash
# The VM scenario suite: runs inside a Debian 12 guest (systemd PID 1, pure cgroup
# v2) as root, after provision.sh installed wfcg.service. Each scenario prints
# PASS or FAIL (with what went wrong); the last line is `N passed, M failed`.
# Figures against systemd go to $WFCG_VM_FIGURES (default /var/tmp/wfcg-figures.txt).
set -uo pipefail

export PATH=/usr/local/bin:$PATH
FIGURES=${WFCG_VM_FIGURES:-/var/tmp/wfcg-figures.txt}
SERVICE_CG=/sys/fs/cgroup/system.slice/wfcg.service
# Where the runs live: wfcg.service itself with systemd >= 254 (DelegateSubgroup=agent),
# else the delegated scope wfcg-runs.scope beside it (see src/agent/placement.rs).
if [ -d "$SERVICE_CG/runs" ]; then ROOT_UNIT=wfcg.service; else ROOT_UNIT=wfcg-runs.scope; fi
ROOT_CG=/sys/fs/cgroup/system.slice/$ROOT_UNIT
TEMPLATES=/etc/wfcg/templates
passed=0
failed=0
failures=()

die() { echo "  $*"; exit 1; }
ms_now() { date +%s%3N; }
# wait_for SECONDS CMD...: polls CMD every 50 ms until it succeeds or time is up.
wait_for() {
  local end=$(($(date +%s) + $1)); shift
  until "$@"; do
    [ "$(date +%s)" -ge "$end" ] && return 1
    sleep 0.05
  done
}
run_cg() { echo "$ROOT_CG/runs/$1"; }
status_of() { wfcg status "$1" --json 2>/dev/null | jq -r .status; }
is_status() { [ "$(status_of "$1")" = "$2" ]; }
# Still going: initializing (the default template waits for READY=1) or running.
is_live() { case "$(status_of "$1")" in initializing | running) ;; *) return 1 ;; esac; }
# Processes anywhere on the host carrying the run's marker in their environment.
marked() { grep -lsa "WFCG_RUN_ID=$1" /proc/[0-9]*/environ 2>/dev/null | wc -l; }
procs_in() { cat "$(run_cg "$1")"/cgroup.procs "$(run_cg "$1")"/*/cgroup.procs 2>/dev/null | wc -l; }
has_procs() { [ "$(procs_in "$1")" -ge "$2" ]; }
detach() { # detach RUN_ID [wfcg run options...] -- CMD...
  local id=$1; shift
  wfcg run --detach --quiet --run-id "$id" "$@" >/dev/null || die "wfcg run --detach $id failed"
}
template() { # template NAME TOML-BODY
  mkdir -p "$TEMPLATES"
  printf '[run]\nready = "start"\n%s\n' "$2" >"$TEMPLATES/$1.toml"
}

scenario() {
  local name=$1
  local start out rc
  start=$(ms_now)
  out=$( ("$name") 2>&1 )
  rc=$?
  if [ $rc -eq 0 ]; then
    passed=$((passed + 1))
    echo "PASS $name ($(($(ms_now) - start)) ms)"
  else
    failed=$((failed + 1))
    failures+=("$name")
    echo "FAIL $name ($(($(ms_now) - start)) ms)"
  fi
  [ -n "$out" ] && printf '%s\n' "$out"
}

# ---------------------------------------------------------------------------

service_ready_reaches_systemd() {
  [ "$(systemctl is-active wfcg)" = active ] || die "wfcg.service is $(systemctl is-active wfcg)"
  [ "$(systemctl show -p Type --value wfcg)" = notify ] || die "not Type=notify"
  # STATUS= comes with READY=1 from the agent: it reached systemd.
  local text; text=$(systemctl show -p StatusText --value wfcg)
  [ "$text" = serving ] || die "StatusText is '$text', expected 'serving' (sent with READY=1)"
  wfcg ps >/dev/null || die "the socket does not answer"
}

agent_lives_in_its_delegated_cgroup() {
  local pid; pid=$(systemctl show -p MainPID --value wfcg)
  local cg; cg=$(sed -n 's/^0:://p' /proc/"$pid"/cgroup)
  case "$cg" in
    /system.slice/wfcg.service | /system.slice/wfcg.service/agent) ;;
    *) die "agent in $cg" ;;
  esac
  [ "$(systemctl show -p Delegate --value wfcg)" = yes ] || die "wfcg.service is not delegated"
  [ "$(systemctl show -p Delegate --value "$ROOT_UNIT")" = yes ] || die "$ROOT_UNIT is not delegated"
  echo "  agent in $cg, runs in $ROOT_UNIT"
  detach vm-place -- sleep 300
  local rpid; rpid=$(wfcg status vm-place --json | jq -r .pid)
  cg=$(sed -n 's/^0:://p' /proc/"$rpid"/cgroup)
  case "$cg" in
    /system.slice/$ROOT_UNIT/runs/vm-place*) ;;
    *) die "run's supervisor in $cg, not under $ROOT_UNIT/runs" ;;
  esac
  [ -z "$(cat "$ROOT_CG/cgroup.procs")" ] || die "processes in $ROOT_CG itself"
  echo "  controllers for runs: $(cat "$ROOT_CG/runs/cgroup.subtree_control")"
  grep -qw memory "$ROOT_CG/runs/cgroup.subtree_control" || die "memory not enabled for runs"
  grep -qw pids "$ROOT_CG/runs/cgroup.subtree_control" || die "pids not enabled for runs"
  wfcg kill vm-place --force >/dev/null || die "kill failed"
}

agent_refuses_an_undelegated_cgroup() {
  local out rc
  out=$(timeout 20 wfcg agent --socket /run/wfcg-refuse/agent.sock --state-dir /var/tmp/wfcg-refuse 2>&1)
  rc=$?
  [ $rc -ne 0 ] || die "an agent outside wfcg.service started (exit 0)"
  echo "$out" | grep -q "is not delegated" || die "no clear refusal: $out"
  echo "  $(echo "$out" | tail -1 | cut -c1-160)…"
  [ ! -e /sys/fs/cgroup/wfcg ] || die "it created /sys/fs/cgroup/wfcg"
}

escape_tree_leaves_no_survivor() {
  detach vm-escape -- sh -c '
    (setsid sh -c "sleep 1001 & sleep 1002" &)
    nohup sleep 1003 >/dev/null 2>&1 &
    sh -c "trap \"\" TERM; while :; do sleep 1; done" &
    sh -c "while :; do sleep 1005 & sleep 0.2; done" &
    sleep 1006'
  wait_for 30 pgrep -f "sleep 1005" >/dev/null || die "the tree did not start"
  wait_for 30 pgrep -f "sleep 1001" >/dev/null || die "the setsid child did not start"
  echo "  $(marked vm-escape) processes in the run before the kill"
  local out; out=$(wfcg kill vm-escape --grace 1s --json) || die "kill failed: $out"
  [ "$(echo "$out" | jq -r .success)" = true ] || die "kill: $out"
  [ "$(marked vm-escape)" -eq 0 ] || die "$(marked vm-escape) survivors"
  [ ! -e "$(run_cg vm-escape)" ] || die "the cgroup is still there"
}

restart_keeps_three_runs_alive() {
  local id pids=()
  for id in vm-r1 vm-r2 vm-r3; do
    detach "$id" -- sleep 600
    pids+=("$(wfcg status "$id" --json | jq -r .pid)")
  done
  local before; before=$(systemctl show -p MainPID --value wfcg)
  systemctl restart wfcg || die "systemctl restart failed: $(journalctl -u wfcg -n 5 --no-pager)"
  [ "$(systemctl is-active wfcg)" = active ] || die "wfcg is $(systemctl is-active wfcg) after restart"
  [ "$(systemctl show -p MainPID --value wfcg)" != "$before" ] || die "the agent did not restart"
  for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null || die "supervisor $pid died in the restart"; done
  for id in vm-r1 vm-r2 vm-r3; do
    is_live "$id" || die "$id is $(status_of "$id") after restart"
  done
  for id in vm-r1 vm-r2 vm-r3; do
    wfcg kill "$id" --force >/dev/null || die "kill $id after restart failed"
    [ "$(marked "$id")" -eq 0 ] || die "$id left processes"
  done
}

stop_leaves_runs_alive() {
  detach vm-stop -- sleep 600
  local pid; pid=$(wfcg status vm-stop --json | jq -r .pid)
  systemctl stop wfcg || die "systemctl stop failed"
  kill -0 "$pid" 2>/dev/null || die "the run died with the agent"
  [ -d "$(run_cg vm-stop)" ] || die "the run's cgroup is gone"
  systemctl start wfcg || die "systemctl start failed: $(journalctl -u wfcg -n 5 --no-pager)"
  is_live vm-stop || die "vm-stop is $(status_of vm-stop) after start"
  wfcg kill vm-stop --force >/dev/null || die "kill after start failed"
}

root_run_starts_the_stopped_service() {
  systemctl stop wfcg || die "systemctl stop failed"
  wfcg run --quiet -- true || die "wfcg run with the service stopped failed"
  [ "$(systemctl is-active wfcg)" = active ] || die "wfcg.service is $(systemctl is-active wfcg)"
}

memory_max_ends_as_oom_killed() {
  template vm-oom '[limits]
"memory.max" = "64M"
[alerts]
on_event = "cat > /var/tmp/wfcg-alert-$WFCG_EVENT_RUN_ID.json"'
  rm -f /var/tmp/wfcg-alert-vm-oom.json
  detach vm-oom --workflow vm-oom -- sh -c 'sleep 1 & tail /dev/zero'
  wait_for 120 is_status vm-oom oom_killed || die "vm-oom is $(status_of vm-oom), expected oom_killed"
  wait_for 20 grep -q '"event":"oom_killed"' /var/tmp/wfcg-alert-vm-oom.json ||
    die "no oom_killed alert"
  [ "$(marked vm-oom)" -eq 0 ] || die "processes survived the OOM kill (memory.oom.group)"
  echo "  $(wfcg status vm-oom | grep -i status | head -1)"
}

pids_max_contains_a_fork_bomb() {
  template vm-pids '[limits]
"pids.max" = "64"'
  detach vm-pids --workflow vm-pids -- bash -c 'b() { while :; do b & sleep 0.01; done; }; b'
  local cg; cg=$(run_cg vm-pids)
  [ "$(cat "$cg/pids.max")" = 64 ] || die "pids.max is $(cat "$cg/pids.max")"
  wait_for 60 grep -q '^max [1-9]' "$cg/pids.events" || die "the bomb never hit pids.max"
  local i n; for i in 1 2 3 4 5; do
    n=$(cat "$cg/pids.current")
    [ "$n" -le 64 ] || die "pids.current $n > 64"
    sleep 0.2
  done
  echo "  pids.current $n, $(cat "$cg/pids.events")"
  local out; out=$(wfcg kill vm-pids --force --json) || die "kill failed: $out"
  [ "$(marked vm-pids)" -eq 0 ] || die "$(marked vm-pids) survivors"
  [ ! -e "$cg" ] || die "the cgroup is still there"
}

memory_high_run_is_killed_quickly() {
  template vm-high '[limits]
"memory.high" = "32M"'
  detach vm-high --workflow vm-high -- tail /dev/zero
  local cg; cg=$(run_cg vm-high)
  wait_for 60 sh -c "awk '/^high /{exit !(\$2>0)}' $cg/memory.events" || die "never over memory.high"
  wait_for 60 sh -c "[ \$(cat $cg/memory.current) -gt 30000000 ]" || die "not held at memory.high"
  sleep 1
  echo "  held: memory.current $(cat "$cg/memory.current"), $(grep high "$cg/memory.events")"
  local t0 t; t0=$(ms_now)
  wfcg kill vm-high >/dev/null || die "kill failed"
  t=$(($(ms_now) - t0))
  echo "  graceful kill of a run held at memory.high: $t ms"
  echo "memory_high_kill_ms $t" >>"$FIGURES"
  [ "$t" -lt 2000 ] || die "took $t ms (>= 2000)"
}

graceful_kill_during_git_commit_leaves_a_sound_repo() {
  local repo=/var/tmp/vm-git
  rm -rf "$repo" && mkdir -p "$repo" && cd "$repo" || die "no repo dir"
  git init -q . && git config user.email vm@wfcg && git config user.name vm
  printf '#!/bin/sh\nsleep 2\n' >.git/hooks/pre-commit && chmod +x .git/hooks/pre-commit
  detach vm-git --workspace "$repo" -- sh -c \
    'i=0; while :; do i=$((i+1)); echo $i >>f; git add f; git commit -qm "c$i"; done'
  wait_for 30 test -e .git/index.lock || die "no commit started"
  sleep 0.5
  local out; out=$(wfcg kill vm-git --json) || die "kill failed: $out"
  # During the hook git keeps index.lock with its fd closed: not a section a scan
  # sees, but a lock the cleanup removes once the tree is dead.
  echo "  waited $(echo "$out" | jq -r .waited_ms) ms for $(echo "$out" | jq -c '[.sections[].path]');" \
    "stale locks removed: $(echo "$out" | jq -c .cleanup_status.stale_locks_removed)"
  [ ! -e .git/index.lock ] || die "index.lock left behind"
  git fsck --strict --no-progress >/dev/null 2>&1 || die "git fsck: $(git fsck --strict 2>&1 | head -3)"
  git status --porcelain >/dev/null || die "git status fails"
  echo "  $(git rev-list --count HEAD 2>/dev/null || echo 0) commits, fsck clean"
}

# A run's commit stopped in its pre-commit hook (index.lock held with its fd
# closed) while an operator's shell and an IDE-like `git status` loop work in the
# repository outside the run: a graceful kill reports the lock as a git section
# and waits its git grace, a force kill removes it; a lock an outside commit
# holds is never touched by a run's kill.
git_hook_with_an_outside_shell_in_the_repository() {
  local repo=/var/tmp/vm-git-hook
  rm -rf "$repo" && mkdir -p "$repo" && cd "$repo" || die "no repo dir"
  export GIT_AUTHOR_NAME=vm GIT_AUTHOR_EMAIL=vm@wfcg GIT_COMMITTER_NAME=vm GIT_COMMITTER_EMAIL=vm@wfcg
  git init -q . && echo 0 >f && git add f && git commit -qm init || die "git init failed"
  printf '#!/bin/sh\ntouch "${HOOK_STARTED:-/var/tmp/vm-hook-started}"\nexec sleep 1000\n' \
    >.git/hooks/pre-commit && chmod +x .git/hooks/pre-commit
  # Globals (the scenario runs in a subshell): the EXIT trap runs after the function returned.
  setsid sleep 1000 & hook_shell=$!
  setsid sh -c 'while :; do git status >/dev/null 2>&1; sleep 0.2; done' & hook_ide=$!
  hook_outside=
  trap 'kill -9 -- -$hook_shell -$hook_ide ${hook_outside:+-$hook_outside} 2>/dev/null' EXIT
  local lock=$repo/.git/index.lock mode out
  for mode in graceful force; do
    rm -f /var/tmp/vm-hook-started && echo "$mode" >>f
    # Tried again while the IDE loop has index.lock for a moment.
    detach "vm-hook-$mode" --workspace "$repo" -- sh -c 'until git commit -qam wip; do sleep 0.1; done'
    wait_for 30 test -e /var/tmp/vm-hook-started -a -e "$lock" || die "$mode: the commit did not stop in its hook"
    if [ "$mode" = graceful ]; then
      out=$(wfcg kill "vm-hook-$mode" --grace-git 2s --json) || die "kill failed: $out"
      echo "$out" | jq -e --arg l "$lock" '[.sections[] | select(.kind == "git") | .path] | index($l)' >/dev/null ||
        die "graceful: $lock not reported as a git section: $(echo "$out" | jq -c .sections)"
      echo "$out" | jq -e '.waited_ms >= 1900 and (.graces_expired | index("git"))' >/dev/null ||
        die "graceful: did not wait the git grace: waited $(echo "$out" | jq .waited_ms) ms"
    else
      out=$(wfcg kill "vm-hook-$mode" --force --json) || die "kill failed: $out"
      echo "$out" | jq -e --arg l "$lock" '.cleanup_status.stale_locks_removed | index($l)' >/dev/null ||
        die "force: $lock not removed: $(echo "$out" | jq -c .cleanup_status)"
    fi
    echo "  $mode: waited $(echo "$out" | jq -r '.waited_ms | floor') ms for $(echo "$out" | jq -c '[.sections[].path] | unique');" \
      "removed $(echo "$out" | jq -c .cleanup_status.stale_locks_removed)"
    # Absent at some moment: the IDE loop's `git status` takes it for a few ms every 0.2 s
    # (a graceful kill's SIGTERM lets git remove its own lock: nothing left to remove).
    wait_for 3 test ! -e "$lock" || die "$mode: index.lock left behind"
    git fsck --strict --no-progress >/dev/null 2>&1 || die "$mode: git fsck: $(git fsck --strict 2>&1 | head -3)"
    # The IDE loop takes index.lock for a moment every 0.2 s: tried again, with a deadline.
    wait_for 5 git -c core.hooksPath=/dev/null commit -qam "after $mode" || die "$mode: the next commit fails"
  done
  # A commit outside the run, stopped in its hook, holds index.lock.
  echo outside >>f
  local tries=0
  until [ -e /var/tmp/vm-outside-started ]; do
    tries=$((tries + 1)) && [ "$tries" -le 30 ] || die "the outside commit did not stop in its hook"
    [ -n "$hook_outside" ] && kill -0 "$hook_outside" 2>/dev/null || {
      HOOK_STARTED=/var/tmp/vm-outside-started setsid git commit -qam outside 2>/dev/null &
      hook_outside=$!
    }
    wait_for 1 test -e /var/tmp/vm-outside-started
  done
  detach vm-hook-outside --workspace "$repo" -- sleep 1000
  wait_for 10 has_procs vm-hook-outside 1 || die "the run did not start"
  out=$(wfcg kill vm-hook-outside --force --json) || die "kill failed: $out"
  [ -e "$lock" ] || die "the outside commit's index.lock removed by the run's kill: $(echo "$out" | jq -c .cleanup_status)"
  kill -0 "$hook_outside" || die "the outside commit ended"
  echo "  an outside commit's index.lock kept by a force kill of a run in the same repository"
  rm -f /var/tmp/vm-outside-started
}

audit_chain_verifies() {
  local out; out=$(wfcg audit verify 2>&1) || die "audit verify failed: $out"
  echo "  $out" | head -2
}

# Figures against systemd on the same VM, in one run (not pass/fail, but must complete).
compare_with_systemd() {
  local tree='for i in $(seq 1000); do sleep 1000 & done; wait'
  detach cmp-wfcg -- sh -c "$tree"
  wait_for 300 has_procs cmp-wfcg 1001 || die "the wfcg tree has $(procs_in cmp-wfcg) processes"
  local t0 w s out; t0=$(ms_now)
  out=$(wfcg kill cmp-wfcg --force --json) || die "wfcg kill failed"
  w=$(($(ms_now) - t0))
  echo "  wfcg phases: $(echo "$out" | jq -r '[.phases[] | "\(.name) \(.duration_ms | floor) ms"] | join(", ")')"
  [ "$(marked cmp-wfcg)" -eq 0 ] || die "wfcg left processes"

  setsid -f systemd-run --scope --quiet --unit cmp-scope -- sh -c "$tree" >/dev/null 2>&1
  local scg=/sys/fs/cgroup/system.slice/cmp-scope.scope
  wait_for 300 sh -c "[ \$(cat $scg/cgroup.procs 2>/dev/null | wc -l) -ge 1001 ]" ||
    die "the scope has $(wc -l <"$scg/cgroup.procs") processes"
  t0=$(ms_now)
  systemctl kill --signal=SIGKILL cmp-scope.scope
  while systemctl is-active --quiet cmp-scope.scope || [ -e "$scg" ]; do sleep 0.005; done
  s=$(($(ms_now) - t0))
  echo "  kill of 1000 processes: wfcg kill --force $w ms, systemctl kill + unit gone $s ms"

  local n=20 i
  t0=$(ms_now); for i in $(seq $n); do wfcg run --quiet -- true || die "wfcg run failed"; done
  local wr=$(( ($(ms_now) - t0) / n ))
  t0=$(ms_now); for i in $(seq $n); do systemd-run --scope --quiet -- true || die "systemd-run failed"; done
  local sr=$(( ($(ms_now) - t0) / n ))
  echo "  start+end of \`true\` (mean of $n): wfcg run $wr ms, systemd-run --scope $sr ms"
  {
    echo "kill_1000_wfcg_ms $w"
    echo "kill_1000_systemd_ms $s"
    echo "run_true_wfcg_ms $wr"
    echo "run_true_systemd_ms $sr"
  } >>"$FIGURES"
}

# ---------------------------------------------------------------------------

: >"$FIGURES"
echo "wfcg VM suite: $(uname -r), systemd $(systemctl --version | head -1 | cut -d' ' -f2), $(wfcg --version)"
echo "cgroup2 controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"
for s in service_ready_reaches_systemd agent_lives_in_its_delegated_cgroup \
         agent_refuses_an_undelegated_cgroup escape_tree_leaves_no_survivor \
         restart_keeps_three_runs_alive stop_leaves_runs_alive root_run_starts_the_stopped_service \
         memory_max_ends_as_oom_killed \
         pids_max_contains_a_fork_bomb memory_high_run_is_killed_quickly \
         graceful_kill_during_git_commit_leaves_a_sound_repo \
         git_hook_with_an_outside_shell_in_the_repository audit_chain_verifies \
         compare_with_systemd; do
  if [ -n "${WFCG_VM_ONLY:-}" ] && ! [[ " $WFCG_VM_ONLY " == *" $s "* ]]; then continue; fi
  scenario "$s"
done
if [ "$failed" -gt 0 ]; then
  echo "failed: ${failures[*]}"
  journalctl -u wfcg --no-pager -n 40 | sed 's/^/  journal: /'
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
