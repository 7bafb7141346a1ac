# shellcheck shell=sh
# kueue-tes executor runner (design §8).
#
# Runs ONE executor's argv inside the executor's own image:
#
#   /tes/bin/busybox sh /tes/bin/runner.sh \
#       <control_dir> <index> <stdin> <stdout> <stderr> <ignore_error> -- <argv...>
#
# stdin/stdout/stderr are file paths or "" when the executor names none; ignore_error is 1 or 0.
# Writes <control_dir>/exec/<index>/{start,end,exit_code,stdout.tail,stderr.tail} (or "skipped"),
# creates <control_dir>/abort on failure, writes a JSON termination message and always exits 0.
# Where the setup container prepared exec/<index>/ (docs/task-pod.md), it also holds the
# sequencer's "life" FIFO open for as long as it lives, and with a "wake" FIFO there (the ready
# layout) it waits for its turn before running and for the verdict before exiting.
# See docs/runner.md.
#
# Rules this file keeps (the executor's image is unknown, possibly distroless):
# * POSIX sh only; it runs under busybox ash in pods and under dash in the unit tests.
# * Helpers are called explicitly through <control_dir>/bin/busybox ("bb tee ..."), or from
#   PATH when that file is absent; PATH and the environment are never changed for the command.
# * No variable is exported; every name carries the __tr_ prefix so that assigning it cannot
#   change a variable of the container's environment.
# * The command gets exactly the environment the container was started with, read back from
#   /proc/$$/environ (the shell itself drops or rewrites some variables: PWD, SHLVL, PATH,
#   OPTIND, PPID, IFS, names that are not shell identifiers).
# * No redirection on a special built-in (":", "exec") in the main shell: a failing one would
#   end the runner. "true >file" is used instead.

__tr_grace=3       # seconds the output helpers may outlive the command (orphans holding stdout)
__tr_tail=65536    # bytes kept in stdout.tail / stderr.tail
__tr_defpath=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# ---------------------------------------------------------------- signals
__tr_sig=
__tr_intr=0
__tr_pid=
__tr_d=
# A signal sent to a freshly forked subshell before it has reset the traps it inherited is
# swallowed (dash, busybox ash). So the handler first leaves a .cancel file, which the command's
# subshell checks after that reset and before it execs the command.
# shellcheck disable=SC2317  # (called from the traps)
__tr_on_signal() {
    __tr_sig=$1
    __tr_intr=1
    if [ -n "$__tr_d" ]; then
        printf '%s\n' "$1" >"$__tr_d/.cancel" 2>/dev/null
    fi
    if [ -n "$__tr_pid" ]; then
        kill -s "$2" "$__tr_pid" 2>/dev/null
        # POSIX shells start background commands with SIGINT and SIGQUIT ignored, so those
        # two would be lost: follow them with SIGTERM
        case $2 in INT | QUIT) kill -s TERM "$__tr_pid" 2>/dev/null ;; esac
    fi
}
trap '__tr_on_signal 15 TERM' TERM
trap '__tr_on_signal 2 INT' INT
trap '__tr_on_signal 3 QUIT' QUIT
trap '__tr_on_signal 1 HUP' HUP

__tr_say() { printf 'runner: %s\n' "$1" >&2; }

# termination message (Kubernetes terminationMessagePath); silently skipped when not writable
__tr_term() {
    if [ -w /dev/termination-log ]; then
        printf '%s\n' "$1" >/dev/termination-log 2>/dev/null
    fi
    return 0
}

# one line to the sequencer through the life FIFO (in a subshell: a sequencer that is gone
# must not end the runner with SIGPIPE)
__tr_life=
__tr_tell() {
    if [ -n "$__tr_life" ]; then
        ( printf '%s\n' "$1" >&7 ) 2>/dev/null
    fi
    return 0
}

# the runner cannot do its job: one line on stderr and to the sequencer, stop later executors,
# exit 0
__tr_fail() {
    __tr_say "$1"
    __tr_tell "fail $1"
    if [ -n "$__tr_ctl" ] && [ -d "$__tr_ctl" ]; then
        true >"$__tr_ctl/abort" 2>/dev/null
    fi
    __tr_term "{\"error\":\"$2\"}"
    exit 0
}

# ---------------------------------------------------------------- arguments
__tr_ctl=$1
if [ "$#" -lt 8 ] || [ "$7" != "--" ]; then
    __tr_fail "usage: runner.sh CONTROL_DIR INDEX STDIN STDOUT STDERR IGNORE_ERROR -- ARGV..." \
        "runner called with bad arguments"
fi
__tr_idx=$2
__tr_in=$3
__tr_out=$4
__tr_err=$5
__tr_ign=$6
shift 7
case $__tr_idx in
    '' | *[!0-9]*) __tr_fail "executor index is not a number: $__tr_idx" "bad executor index" ;;
esac

if [ -f "$__tr_ctl/bin/busybox" ] && [ -x "$__tr_ctl/bin/busybox" ]; then
    __tr_bb=$__tr_ctl/bin/busybox
else
    __tr_bb=
fi
bb() {
    if [ -n "$__tr_bb" ]; then "$__tr_bb" "$@"; else "$@"; fi
}
# the same as the last command of a background subshell (no shell process left in between)
bbexec() {
    if [ -n "$__tr_bb" ]; then exec "$__tr_bb" "$@"; else exec "$@"; fi
}

__tr_d=$__tr_ctl/exec/$__tr_idx

# ---------------------------------------------------------------- liveness (docs/runner.md)
# The sequencer reads exec/<i>/life. Holding its write end open (fd 7) for as long as the runner
# lives tells it that the runner is alive: however the runner ends, the kernel closes the FIFO
# and the sequencer sees the hang-up at once. The open waits until the sequencer reads it.
# "command exec": a failed redirection must not end the runner.
if [ -p "$__tr_d/life" ] && command exec 7>"$__tr_d/life"; then
    __tr_life=1
fi

if ! bb mkdir -p "$__tr_d" 2>/dev/null || ! true >"$__tr_d/.probe" 2>/dev/null; then
    __tr_fail "control directory $__tr_ctl is not writable; executor $__tr_idx not run" \
        "control directory not writable"
fi
bb rm -f "$__tr_d/.probe"

# write a small file atomically (readers poll these files)
__tr_put() {
    if printf '%s\n' "$2" >"$1.tmp" 2>/dev/null && bb mv -f "$1.tmp" "$1"; then
        return 0
    fi
    __tr_say "cannot write $1"
    return 1
}

# RFC 3339 UTC timestamp, microseconds when the clock can tell
__tr_now() {
    __tr_t=$(bb date -u +%Y-%m-%dT%H:%M:%S.%N 2>/dev/null)
    case $__tr_t in
        *T??:??:??.[0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9])
            printf '%s\n' "${__tr_t%???}Z"
            return 0
            ;;
    esac
    # busybox date has no %N: use the sub-second part of a fresh file's mtime
    if true >"$__tr_d/.now" 2>/dev/null \
        && __tr_t=$(bb stat -c '%Y %y' "$__tr_d/.now" 2>/dev/null); then
        __tr_s=${__tr_t%% *}
        __tr_f=${__tr_t#*.}
        __tr_f=${__tr_f%% *}
        case $__tr_f in
            [0-9][0-9][0-9][0-9][0-9][0-9]*)
                __tr_f=${__tr_f%"${__tr_f#??????}"}
                if __tr_t=$(bb date -u -d "@$__tr_s" +%Y-%m-%dT%H:%M:%S 2>/dev/null); then
                    case $__tr_t in
                        ????-??-??T??:??:??)
                            printf '%s.%sZ\n' "$__tr_t" "$__tr_f"
                            return 0
                            ;;
                    esac
                fi
                ;;
        esac
    fi
    bb date -u +%Y-%m-%dT%H:%M:%SZ 2>/dev/null
}

# wait for a child even across trapped signals (a trapped signal interrupts "wait");
# sets __tr_st
__tr_wait() {
    __tr_intr=0
    wait "$1"
    __tr_st=$?
    while [ "$__tr_intr" = 1 ]; do
        __tr_intr=0
        wait "$1"
        __tr_w=$?
        # 127: the first wait already collected the child (its exit raced with the signal)
        [ "$__tr_w" -eq 127 ] || __tr_st=$__tr_w
    done
}

# ---------------------------------------------------------------- turns (the ready layout)
# Every executor container starts at once; each runner waits for exec/<i>/turn, which the
# sequencer writes for executor 0 once inputs are staged and each runner for the next one when
# its own executor ends. Whoever writes a flag then writes a newline into the waiter's wake FIFO
# (fd 8, opened read-write: the open never blocks and keeps the FIFO's data for us). The flag is
# checked after fd 8 is open, so a wake-up is never lost; the timed read is only a safeguard.
__tr_gated=0
if [ -p "$__tr_d/wake" ] && command exec 8<>"$__tr_d/wake"; then
    __tr_gated=1
fi
__tr_nap=30       # seconds between checks of the flags when no wake-up comes
# busybox ash (every task pod) reads with a timeout in the shell itself; dash cannot
__tr_readt=0
if ( read -t 1 -r __tr_x </dev/null ) 2>/dev/null; [ "$?" -eq 1 ]; then
    __tr_readt=1
fi
# block until flag file $1 (or the verdict) exists or a signal arrives
__tr_await() {
    while [ ! -e "$1" ] && [ ! -e "$__tr_ctl/verdict" ] && [ -z "$__tr_sig" ]; do
        if [ "$__tr_readt" = 1 ]; then
            read -t "$__tr_nap" -r __tr_x <&8
        else
            if [ -n "$__tr_bb" ]; then
                "$__tr_bb" timeout "$__tr_nap" "$__tr_bb" head -c 1 <&8 >/dev/null 2>&1 7>&- &
            else
                timeout "$__tr_nap" head -c 1 <&8 >/dev/null 2>&1 7>&- &
            fi
            __tr_pid=$!
            __tr_wait "$__tr_pid"
            __tr_pid=
        fi
    done
}
# the next executor's turn, then the end of this runner: in the ready layout it stays (and its
# container Ready) until the sequencer's verdict exists
__tr_done() {
    # (not when the pod is being stopped: the next executor must not start now)
    if [ "$__tr_gated" = 1 ] && [ -z "$__tr_sig" ]; then
        __tr_n=$__tr_ctl/exec/$((__tr_idx + 1))
        if [ -p "$__tr_n/wake" ]; then
            true >"$__tr_n/turn" 2>/dev/null || __tr_say "cannot write $__tr_n/turn"
            printf '\n' 1<>"$__tr_n/wake" 2>/dev/null
        fi
    fi
    __tr_tell end
    if [ "$__tr_gated" = 1 ]; then
        __tr_await "$__tr_ctl/verdict"
    fi
    exit 0
}
__tr_skip() {
    true >"$__tr_d/skipped" 2>/dev/null || __tr_say "cannot write $__tr_d/skipped"
    __tr_term '{"skipped":true}'
    __tr_done
}
if [ "$__tr_gated" = 1 ]; then
    __tr_await "$__tr_d/turn"
    # the attempt ended before this executor's turn (or the pod is being stopped): never ran
    [ -e "$__tr_d/turn" ] && [ -z "$__tr_sig" ] || __tr_skip
fi

# ---------------------------------------------------------------- skip
if [ -e "$__tr_ctl/abort" ]; then
    __tr_skip
fi

# ---------------------------------------------------------------- environment
# The container's environment as shell-quoted words, from /proc/$$/environ. xargs -0 hands
# each NUL-terminated entry to a shell as one argument, which quotes it; xargs may split the
# work into several shells, whose outputs simply concatenate.
__tr_envok=0
__tr_envq=
# (the quoting shell below avoids a literal single quote: it makes one with printf)
# shellcheck disable=SC2016  # (expanded by that shell)
__tr_q='sq=$(printf "\\047")
for a do
    case $a in [!=]*=*) ;; *) continue ;; esac
    q= r=$a
    while :; do
        case $r in
            *"$sq"*) q=$q${r%%"$sq"*}$sq\\$sq$sq; r=${r#*"$sq"} ;;
            *) q=$q$r; break ;;
        esac
    done
    printf "%s%s%s " "$sq" "$q" "$sq"
done'
if [ -r "/proc/$$/environ" ]; then
    if [ -n "$__tr_bb" ]; then
        __tr_envq=$("$__tr_bb" xargs -0 "$__tr_bb" sh -c "$__tr_q" sh <"/proc/$$/environ") \
            && __tr_envok=1
    else
        __tr_envq=$(xargs -0 sh -c "$__tr_q" sh <"/proc/$$/environ") && __tr_envok=1
    fi
    if [ "$__tr_envok" != 1 ]; then
        __tr_say "cannot read the container environment; the command gets the shell's"
        __tr_envq=
    fi
fi

# PATH the command is looked up on: the container's, else the runtime default
__tr_path=
__tr_pathset=0
__tr_findpath() {
    eval "set -- $__tr_envq"
    for __tr_e do
        case $__tr_e in
            PATH=*) __tr_path=${__tr_e#PATH=}; __tr_pathset=1; return 0 ;;
        esac
    done
}
if [ "$__tr_envok" = 1 ]; then
    __tr_findpath
elif [ -n "${PATH+x}" ]; then
    __tr_path=$PATH
    __tr_pathset=1
fi
[ "$__tr_pathset" = 1 ] || __tr_path=$__tr_defpath

# ---------------------------------------------------------------- command lookup
# Resolved here, not by the shell: busybox ash would run its own applet (or any shell its
# builtin) instead of the image's program of that name. Sets __tr_cmd or __tr_pre/__tr_prerc.
__tr_cmd=
__tr_pre=
__tr_prerc=0
case $1 in
    */*)
        if [ -d "$1" ]; then
            __tr_pre="$1: Is a directory"; __tr_prerc=126
        elif [ -f "$1" ] && [ -x "$1" ]; then
            __tr_cmd=$1
        elif [ -e "$1" ]; then
            __tr_pre="$1: Permission denied"; __tr_prerc=126
        else
            __tr_pre="$1: not found"; __tr_prerc=127
        fi
        ;;
    '')
        __tr_pre="empty command name: not found"; __tr_prerc=127
        ;;
    *)
        __tr_r=$__tr_path
        __tr_denied=
        while :; do
            case $__tr_r in
                *:*) __tr_p=${__tr_r%%:*}; __tr_r=${__tr_r#*:}; __tr_last= ;;
                *) __tr_p=$__tr_r; __tr_last=1 ;;
            esac
            [ -n "$__tr_p" ] || __tr_p=.
            if [ -f "$__tr_p/$1" ]; then
                if [ -x "$__tr_p/$1" ]; then
                    __tr_cmd=$__tr_p/$1
                    break
                fi
                [ -n "$__tr_denied" ] || __tr_denied=$__tr_p/$1
            fi
            [ -z "$__tr_last" ] || break
        done
        if [ -z "$__tr_cmd" ]; then
            if [ -n "$__tr_denied" ]; then
                __tr_pre="$__tr_denied: Permission denied"; __tr_prerc=126
            else
                __tr_pre="$1: not found"; __tr_prerc=127
            fi
        fi
        ;;
esac
shift 1   # argv[0] is replaced by __tr_cmd

# stdin: the named file, else /dev/null (what a container without "stdin: true" gets)
if [ -z "$__tr_pre" ] && [ -n "$__tr_in" ] && { [ -d "$__tr_in" ] || [ ! -r "$__tr_in" ]; }; then
    __tr_pre="cannot read stdin file $__tr_in"; __tr_prerc=1
fi
# stdout/stderr files: truncated once here (also when both name the same file), then
# appended to by the helpers
for __tr_f in "$__tr_out" "$__tr_err"; do
    if [ -n "$__tr_f" ] && ! true >"$__tr_f" 2>/dev/null; then
        [ -n "$__tr_pre" ] || { __tr_pre="cannot create $__tr_f"; __tr_prerc=1; }
        if [ "$__tr_f" = "$__tr_out" ]; then __tr_out=; fi
        if [ "$__tr_f" = "$__tr_err" ]; then __tr_err=; fi
    fi
done

# ---------------------------------------------------------------- output plumbing
# command -> FIFO -> tee -> container stream (+ named file) + FIFO -> tail -c 64k -> *.tail
__tr_fo="$__tr_d/.stdout.fifo"
__tr_fe="$__tr_d/.stderr.fifo"
__tr_fot="$__tr_d/.stdout.tail.fifo"
__tr_fet="$__tr_d/.stderr.tail.fifo"
__tr_pipes=0
if [ -n "$__tr_bb" ] || { command -v mkfifo && command -v tee && command -v tail; } >/dev/null 2>&1
then
    bb rm -f "$__tr_fo" "$__tr_fe" "$__tr_fot" "$__tr_fet"
    if bb mkfifo "$__tr_fo" "$__tr_fe" "$__tr_fot" "$__tr_fet"; then
        __tr_pipes=1
    fi
fi
__tr_helpers=
__tr_tees=
if [ "$__tr_pipes" = 1 ]; then
    bbexec tail -c "$__tr_tail" <"$__tr_fot" >"$__tr_d/stdout.tail" 7>&- 8>&- &
    __tr_helpers="$__tr_helpers $!"
    bbexec tail -c "$__tr_tail" <"$__tr_fet" >"$__tr_d/stderr.tail" 7>&- 8>&- &
    __tr_helpers="$__tr_helpers $!"
    bbexec tee -a "$__tr_fot" ${__tr_out:+"$__tr_out"} <"$__tr_fo" 7>&- 8>&- &
    __tr_tees="$__tr_tees $!"
    bbexec tee -a "$__tr_fet" ${__tr_err:+"$__tr_err"} <"$__tr_fe" >&2 7>&- 8>&- &
    __tr_tees="$__tr_tees $!"
    __tr_helpers="$__tr_helpers$__tr_tees"
    __tr_o=$__tr_fo
    __tr_e=$__tr_fe
else
    __tr_say "cannot set up output capture; no stdout.tail/stderr.tail for executor $__tr_idx"
    __tr_o=$__tr_out
    __tr_e=$__tr_err
fi

# ---------------------------------------------------------------- run
case $__tr_cmd in
    *=*) __tr_envok=0 ;;   # env(1) would take the program for an assignment
esac
__tr_start=$(__tr_now)
[ -z "$__tr_start" ] || __tr_put "$__tr_d/start" "$__tr_start"
__tr_tell start

if [ -n "$__tr_sig" ]; then
    # cancelled before the command could start
    __tr_pre="cancelled by signal $__tr_sig before start"
    __tr_prerc=$((128 + __tr_sig))
fi

(
    exec 7>&- 8>&-   # the FIFOs are ours, not the command's
    if [ -n "$__tr_o" ]; then exec >>"$__tr_o"; fi
    if [ -n "$__tr_e" ]; then exec 2>>"$__tr_e"; fi
    if [ -n "$__tr_pre" ]; then
        printf 'runner: %s\n' "$__tr_pre" >&2
        exit "$__tr_prerc"
    fi
    exec <"${__tr_in:-/dev/null}"
    if [ -e "$__tr_d/.cancel" ]; then
        read -r __tr_cs <"$__tr_d/.cancel"
        exit "$((128 + ${__tr_cs:-15}))"
    fi
    if [ "$__tr_envok" = 1 ]; then
        if [ -n "$__tr_bb" ]; then
            eval "exec \"\$__tr_bb\" env -i -- $__tr_envq \"\$__tr_cmd\" \"\$@\""
        else
            eval "exec env -i -- $__tr_envq \"\$__tr_cmd\" \"\$@\""
        fi
    fi
    exec "$__tr_cmd" "$@"
) &
__tr_pid=$!
if [ -n "$__tr_sig" ]; then
    kill -s TERM "$__tr_pid" 2>/dev/null   # the signal came between the fork and "$!"
fi
__tr_wait "$__tr_pid"
__tr_rc=$__tr_st
__tr_pid=
__tr_end=$(__tr_now)

# ---------------------------------------------------------------- finish
if [ "$__tr_pipes" = 1 ]; then
    # a background process the command left behind may hold the FIFOs open: give the
    # helpers a grace period, then stop the tees (the tails then see EOF and write).
    # The watchdog is ended with SIGKILL: a signal that reaches a freshly forked subshell
    # before it has reset the traps it inherited is swallowed (dash), KILL cannot be.
    # shellcheck disable=SC2086  # (a list of pids)
    ( bb sleep "$__tr_grace"; kill $__tr_tees ) </dev/null >/dev/null 2>&1 7>&- 8>&- &
    __tr_dog=$!
    # Opening a FIFO read-write never blocks and gives a reader still stuck in its own open
    # (the command died before opening its output) a writer, then EOF.
    true <>"$__tr_fo" 2>/dev/null
    true <>"$__tr_fe" 2>/dev/null
    for __tr_h in $__tr_tees; do
        __tr_wait "$__tr_h"
    done
    # the same for a tail whose tee never got as far as opening it (only now: a tee that is
    # still to open it must not find the tail gone)
    true <>"$__tr_fot" 2>/dev/null
    true <>"$__tr_fet" 2>/dev/null
    for __tr_h in $__tr_helpers; do
        __tr_wait "$__tr_h"
    done
    kill -s KILL "$__tr_dog" 2>/dev/null
    __tr_wait "$__tr_dog" 2>/dev/null   # (dash reports "Killed" on stderr)
    bb rm -f "$__tr_fo" "$__tr_fe" "$__tr_fot" "$__tr_fet"
fi
bb rm -f "$__tr_d/.now" "$__tr_d/.cancel"

if [ -n "$__tr_sig" ] && [ "$__tr_rc" -eq 0 ]; then
    __tr_rc=$((128 + __tr_sig))   # a cancelled executor never counts as a success
fi
[ -z "$__tr_end" ] || __tr_put "$__tr_d/end" "$__tr_end"
if [ "$__tr_rc" -ne 0 ] && { [ "$__tr_ign" != 1 ] || [ -n "$__tr_sig" ]; }; then
    true >"$__tr_ctl/abort" 2>/dev/null || __tr_say "cannot create $__tr_ctl/abort"
fi
__tr_put "$__tr_d/exit_code" "$__tr_rc"

__tr_js=null
__tr_je=null
[ -z "$__tr_start" ] || __tr_js="\"$__tr_start\""
[ -z "$__tr_end" ] || __tr_je="\"$__tr_end\""
__tr_term "{\"exit_code\":$__tr_rc,\"start\":$__tr_js,\"end\":$__tr_je}"
__tr_done
