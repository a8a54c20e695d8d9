#!/bin/sh
# Simulated nvidia-smi (provision-sim). Reads the simulated driver from
# /proc/driver/nvidia (bind-mounted by the simulator) and compares it with the
# version of the userspace library it stands for, like NVML does.
LIB_VERSION="@LIB_VERSION@"
PROC=/proc/driver/nvidia
fail_driver() {
    echo "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure that the latest NVIDIA driver is installed and running."
    echo
    exit 9
}
[ -e /dev/nvidiactl ] || fail_driver
[ -r "$PROC/version" ] || fail_driver
DRIVER=$(sed -n 's/^NVRM version:.*  \([0-9][0-9]*\.[0-9][0-9.]*\)  .*/\1/p' "$PROC/version" | head -n1)
[ -n "$DRIVER" ] || fail_driver
[ "$LIB_VERSION" = "host" ] && LIB_VERSION=$DRIVER
if [ "$LIB_VERSION" != "$DRIVER" ]; then
    echo "Failed to initialize NVML: Driver/library version mismatch"
    echo "NVML library version: $(echo "$LIB_VERSION" | cut -d. -f1,2)"
    exit 18
fi
case "$DRIVER" in
    535.*) CUDA=12.2 ;; 550.*) CUDA=12.4 ;; 570.*) CUDA=12.8 ;; 575.*) CUDA=12.9 ;;
    580.*) CUDA=13.0 ;; 590.*) CUDA=13.1 ;; 595.*) CUDA=13.2 ;; *) CUDA=13.2 ;;
esac
# sim-gpus: index|name|compute_cap|memory.total MiB|pci.bus_id|memory.used MiB|uuid
GPUS="$PROC/sim-gpus"

query() {
    fields=$1; header=$2; units=$3
    if [ "$header" = 1 ]; then
        echo "$fields" | awk -v units="$units" -F, '{
            for (i = 1; i <= NF; i++) { h = $i
                if (units == 1 && h ~ /^memory\./) h = h " [MiB]"
                printf "%s%s", h, (i < NF ? ", " : "\n") } }'
    fi
    awk -F'|' -v fields="$fields" -v driver="$DRIVER" -v units="$units" '{
        n = split(fields, f, ",")
        for (i = 1; i <= n; i++) {
            k = f[i]; u = (units == 1) ? " MiB" : ""
            if (k == "index") v = $1
            else if (k == "name" || k == "gpu_name") v = $2
            else if (k == "driver_version") v = driver
            else if (k == "compute_cap") v = $3
            else if (k == "memory.total") v = $4 u
            else if (k == "memory.used") v = $6 u
            else if (k == "memory.free") v = ($4 - $6) u
            else if (k == "pci.bus_id") v = $5
            else if (k == "uuid" || k == "gpu_uuid") v = $7
            else if (k == "count") v = NR_TOTAL
            else { print "Field \"" k "\" is not a valid field to query." > "/dev/stderr"; exit 2 }
            printf "%s%s", v, (i < n ? ", " : "\n")
        } }' "$GPUS"
}

table() {
    date "+%a %b %e %H:%M:%S %Y"
    echo "+-----------------------------------------------------------------------------------------+"
    printf "| NVIDIA-SMI %-22s Driver Version: %-14s CUDA Version: %-9s|\n" "$DRIVER" "$DRIVER" "$CUDA"
    echo "|-----------------------------------------+------------------------+----------------------+"
    echo "| GPU  Name                 Persistence-M | Bus-Id          Disp.A | Volatile Uncorr. ECC |"
    echo "| Fan  Temp   Perf          Pwr:Usage/Cap |           Memory-Usage | GPU-Util  Compute M. |"
    echo "|=========================================+========================+======================|"
    awk -F'|' '{
        printf "| %3s  %-24.24s       Off | %-16s   Off |                  N/A |\n", $1, $2, $5
        printf "|  0%%   35C    P8             10W /  450W | %6sMiB / %7sMiB |      0%%      Default |\n", $6, $4
        print "+-----------------------------------------+------------------------+----------------------+"
    }' "$GPUS"
    echo
    echo "+-----------------------------------------------------------------------------------------+"
    echo "| Processes:                                                                              |"
    echo "|  GPU   GI   CI              PID   Type   Process name                        GPU Memory |"
    echo "|=========================================================================================|"
    echo "|  No running processes found                                                             |"
    echo "+-----------------------------------------------------------------------------------------+"
}

FIELDS=""; HEADER=1; UNITS=1; MODE=table
for arg in "$@"; do
    case "$arg" in
        -L|--list-gpus) MODE=list ;;
        --version) MODE=version ;;
        --query-gpu=*) FIELDS=${arg#--query-gpu=}; MODE=query ;;
        --format=*)
            case ",${arg#--format=}," in *,noheader,*) HEADER=0 ;; esac
            case ",${arg#--format=}," in *,nounits,*) UNITS=0 ;; esac ;;
        -q|--query) MODE=table ;;
        *) echo "Invalid combination of input arguments. Please run 'nvidia-smi -h' for help." >&2; exit 2 ;;
    esac
done
case $MODE in
    list) awk -F'|' '{ printf "GPU %s: %s (UUID: %s)\n", $1, $2, $7 }' "$GPUS" ;;
    version) printf "NVIDIA-SMI version  : %s\nNVML version        : %s\nDRIVER version      : %s\nCUDA Version        : %s\n" \
                 "$DRIVER" "$(echo "$DRIVER" | cut -d. -f1,2)" "$DRIVER" "$CUDA" ;;
    query) query "$FIELDS" "$HEADER" "$UNITS" ;;
    table) table ;;
esac
