"""``provision sim start|stop|status|fault``: the simulated Proxmox node (needs root + lxc)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from provisioner.errors import ProvisionError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Run a simulated Proxmox VE node (real LXC containers) on this machine.")
fault_app = typer.Typer(no_args_is_help=True, help="Inject faults into a running simulated node.")
app.add_typer(fault_app, name="fault")

NAME = typer.Option("pve", "--name", help="Node name; state lives in /var/lib/provision-sim/<name>.")


def _fail(exc: ProvisionError) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(1)


@app.command()
def start(name: str = NAME,
          pve_version: str = typer.Option("9.1", "--pve-version", help="8.4 or 9.1."),
          gpu: list[str] | None = typer.Option(
              None, "--gpu", help='"NAME,COMPUTE_CAP,VRAM_MIB[,PCI_BUS_ID]"; repeat for more GPUs.'),
          driver: str = typer.Option("580.95.05", "--driver", help="Loaded host driver version."),
          api_port: int = typer.Option(8006, "--api-port"),
          ssh_port: int = typer.Option(2222, "--ssh-port"),
          apt_port: int = typer.Option(8089, "--apt-port", help="Port of the CUDA repo on 10.0.3.1."),
          no_uvm: bool = typer.Option(False, "--no-uvm", help="Start as after a reboot: no /dev/nvidia-uvm."),
          json_out: bool = typer.Option(False, "--json", help="Print connection.json instead."),
          cluster: str = typer.Option("", "--cluster", help="Found or join this simulated PVE cluster "
                                      "(start one node per call, each with its own ports and --gpu)."),
          node: str = typer.Option("", "--node", help="PVE node name (default: NAME).")) -> None:
    """Start the node in the background (idempotent) and print how to connect."""
    from provisioner.sim import manage
    from provisioner.sim.host.nvidia import Gpu, parse_gpu

    try:
        gpus = [parse_gpu(g) for g in gpu] if gpu else [Gpu()]
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    opts = manage.StartOptions(name=name, pve_version=pve_version, gpus=gpus, driver=driver,
                               api_port=api_port, ssh_port=ssh_port, apt_port=apt_port,
                               uvm_loaded=not no_uvm, cluster=cluster, node=node)
    try:
        conn = manage.start(opts, log=lambda line: typer.echo(line, err=True))
    except ProvisionError as exc:
        _fail(exc)
    if json_out:
        typer.echo(json.dumps(conn, indent=2))
        return
    api, ssh = conn["api"], conn["ssh"]
    password = Path(api["password_file"]).read_text().strip()
    secret = Path(api["token_secret_file"]).read_text().strip()
    typer.echo(f"simulated PVE {conn['pve_version']} node '{conn['node']}' is running\n"
               f"  API          {api['url']}\n"
               f"  fingerprint  {api['fingerprint']}\n"
               f"  root@pam     password {password}   (also in {api['password_file']})\n"
               f"  API token    {api['token_id']} = {secret}   (also in {api['token_secret_file']})\n"
               f"  SSH          ssh -i {ssh['key_file']} -o UserKnownHostsFile={ssh['known_hosts']} "
               f"-p {ssh['port']} root@{ssh['host']}\n"
               f"  bridge       vmbr0 (= lxcbr0), gateway {conn['network']['gateway']}, "
               f"CTs use 10.0.3.2-254\n"
               f"  CUDA repo    {conn['cuda_repo_url']}\n"
               f"  host file values: {conn['sim_root']}/connection.json")


@app.command()
def stop(name: str = NAME,
         keep_state: bool = typer.Option(False, "--keep-state", help="Keep SIM_ROOT (containers' disks).")) -> None:
    """Stop the node: remove every container, mount, device node and process it made."""
    from provisioner.sim import manage

    for line in manage.stop(name, keep_state=keep_state):
        typer.echo(line)


@app.command()
def status(name: str = NAME) -> None:
    """Show whether the node runs, its services and containers (JSON)."""
    from provisioner.sim import manage

    info = manage.status(name)
    typer.echo(json.dumps(info, indent=2))
    if info["state"] != "running":
        raise typer.Exit(1)


def _faults(name: str):
    from provisioner.sim import manage
    from provisioner.sim.host.faults import Faults

    root = manage.sim_root(name)
    if manage.host_pid(root) is None:
        typer.echo(f"error: simulated node '{name}' is not running", err=True)
        raise typer.Exit(1)
    return Faults(root)


@fault_app.command("upgrade-driver")
def fault_upgrade_driver(version: str = typer.Argument(..., help="New driver, e.g. 595.71.05."),
                         no_reboot: bool = typer.Option(False, "--no-reboot",
                                                        help="Installed but not loaded yet."),
                         name: str = NAME) -> None:
    """Upgrade the host driver (containers keep their userspace)."""
    _faults(name).upgrade_host_driver(version, reboot=not no_reboot)


@fault_app.command("drop-uvm")
def fault_drop_uvm(name: str = NAME) -> None:
    """Unload nvidia_uvm and remove /dev/nvidia-uvm* (as after a reboot)."""
    _faults(name).drop_uvm()


@fault_app.command("newer-kernel")
def fault_newer_kernel(kver: str = typer.Argument(..., help="e.g. 6.17.2-1-pve"),
                       without_module: bool = typer.Option(False, "--without-module",
                                                           help="DKMS did not build nvidia.ko for it."),
                       name: str = NAME) -> None:
    """Install a newer (not running) kernel, with or without the NVIDIA module built for it."""
    _faults(name).set_newer_kernel(kver, has_module=not without_module)


@fault_app.command("dkms-fails")
def fault_dkms_fails(version: str = typer.Argument(..., help="Driver version, e.g. 595.71.05."),
                     kver: str = typer.Argument(..., help="Kernel, e.g. 6.17.2-1-pve."),
                     name: str = NAME) -> None:
    """DKMS cannot build that driver version for that kernel (`provision host` must refuse it)."""
    _faults(name).dkms_build_fails(version, kver)


@fault_app.command("dpkg-lock")
def fault_dpkg_lock(vmid: int, seconds: float = typer.Option(60, "--seconds"), name: str = NAME) -> None:
    """Hold /var/lib/dpkg/lock-frontend inside the CT for a while."""
    lock = _faults(name).hold_dpkg_lock(vmid, seconds)
    typer.echo(f"dpkg lock held in CT {vmid} by pid {lock.ct_pid} for {seconds:g}s")


@fault_app.command("drop-ssh")
def fault_drop_ssh(name: str = NAME) -> None:
    """Kill every open SSH connection to the host."""
    typer.echo(f"dropped {_faults(name).drop_ssh_connections()} connection(s)")


@fault_app.command("fail-next-task")
def fault_fail_next_task(task_type: str = typer.Option("*", "--type", help="vzcreate, vzstart, ... or *."),
                         message: str = typer.Option("injected failure", "--message"),
                         name: str = NAME) -> None:
    """Make the next API task (of a type) fail with a message."""
    _faults(name).fail_next_task(task_type, message)


@fault_app.command("delay")
def fault_delay(api_ms: int = typer.Option(0, "--api-ms"), ssh_ms: int = typer.Option(0, "--ssh-ms"),
                name: str = NAME) -> None:
    """Delay every API request and/or every SSH command (0 clears)."""
    faults = _faults(name)
    faults.set_api_delay(api_ms)
    faults.set_ssh_delay(ssh_ms)


@fault_app.command("clear")
def fault_clear(name: str = NAME) -> None:
    """Clear delays and a pending task failure."""
    _faults(name).clear()
