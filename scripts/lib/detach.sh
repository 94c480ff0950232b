# Sourced by the scripts that start a daemon in the background.
#
# start_detached LOG COMMAND [ARG...]: runs COMMAND in the background with
# stdin from /dev/null, stdout and stderr appended to LOG, and no other file
# descriptor of the caller. A daemon that inherited one would hold it for its
# whole life: a lock taken with flock(1) around the script, say, would never
# be released.
start_detached() {
    local log=$1
    shift
    (
        for fd in /proc/$BASHPID/fd/*; do
            fd=${fd##*/}
            if [[ $fd =~ ^[0-9]+$ ]] && ((fd > 2)); then
                eval "exec $fd>&-"
            fi
        done 2>/dev/null
        exec nohup "$@" >>"$log" 2>&1 </dev/null
    ) &
}
