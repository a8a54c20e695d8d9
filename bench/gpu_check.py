"""The Python half of ``bench/gpu_check.sh``: the product's own code, driven on a real NVIDIA machine.

Subcommands (all print JSON or shell-ready text; ``gpu_check.sh`` strings them together):

- ``prepare DIR`` (on the development machine): the llama.cpp tarball of ``assets.llama_source()``
  and a generated tiny GGUF (random weights, SmolLM2's real tokenizer; a few MB) into DIR, small
  enough to travel with the working tree to the GPU machine.
- ``build DIR TARBALL CC TOOLKIT [FLAG...]``: the product's CUDA build spec for compute capability CC
  (``cuda_matrix.architectures``), written as the product's build script (``DIR/build.sh``), its
  configure and build command lines (``DIR/configure.sh``) and its dependency list (``DIR/deps``).
- ``raw DIR``: the real machine's driver and GPU readings into DIR (the product's own fact commands,
  and independent ones: nvidia-smi -q, /sys/bus/pci), so they can be kept as recorded outputs.
- ``facts DIR``: the product's parsers (``facts/nvidia.py``) on the readings in DIR, each parsed
  fact compared with the independent reading; exit 1 on any mismatch.
- ``sass FILE``: the SASS architectures in ``cuobjdump --list-elf`` output.
- ``serve URL``: one completion from a running llama-server; tokens/s from its own timings.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RAW = {  # file name in DIR → the command that produces it on the GPU machine
    "driver.txt": None,  # facts.nvidia.DRIVER's own command
    "gpus.txt": None,  # facts.nvidia.GPUS's own command
    "nvidia-smi-q.txt": "nvidia-smi -q",
    "proc-version.txt": "cat /proc/driver/nvidia/version",
    "sys-version.txt": "cat /sys/module/nvidia/version",
    "pci.txt": "for d in /sys/bus/pci/devices/*; do [ \"$(cat $d/vendor)\" = 0x10de ] && "
               "[ \"$(cut -c1-6 $d/class)\" = 0x0300 -o \"$(cut -c1-6 $d/class)\" = 0x0302 ] && "
               "echo \"${d##*/} $(cat $d/device)\"; done; true",
}


def _bash(script: str) -> tuple[str, int]:
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=False)
    return proc.stdout + proc.stderr, proc.returncode


def raw(out: Path) -> None:
    from provisioner.facts.nvidia import DRIVER, GPUS

    out.mkdir(parents=True, exist_ok=True)
    for name, command in RAW.items():
        command = command or (DRIVER.command if name == "driver.txt" else GPUS.command)
        text, code = _bash(command)
        (out / name).write_text(text)
        (out / (name + ".rc")).write_text(f"{code}\n")


def _q_values(text: str) -> dict[str, list[str]]:
    """``nvidia-smi -q``: ``    Key        : value`` lines, every occurrence kept (one per GPU)."""
    values: dict[str, list[str]] = {}
    section = ""
    for line in text.splitlines():
        indent = len(line) - len(line.lstrip())
        m = re.match(r"^\s*([^:]+?)\s*:\s*(.*)$", line)
        key, value = (m.group(1).strip(), m.group(2).strip()) if m else (line.strip(), "")
        if not value:  # a section header ("    PCI", "    FB Memory Usage")
            section = key if key and indent <= 4 else section
            continue
        values.setdefault(f"{section}/{key}" if indent > 4 else key, []).append(value)
    return values


def facts(d: Path) -> dict:
    """Parsed facts vs independent readings; ``ok`` only when every comparison matched."""
    from provisioner.facts.nvidia import parse_driver, parse_gpus, parse_proc_version

    rc = lambda name: int((d / (name + ".rc")).read_text().strip() or 1)
    driver = parse_driver((d / "driver.txt").read_text(), rc("driver.txt"))
    gpus = parse_gpus((d / "gpus.txt").read_text(), rc("gpus.txt"))
    q = _q_values((d / "nvidia-smi-q.txt").read_text())
    sys_version = (d / "sys-version.txt").read_text().strip()
    proc_version, flavour = parse_proc_version((d / "proc-version.txt").read_text())
    pci = [ln.split() for ln in (d / "pci.txt").read_text().splitlines() if len(ln.split()) == 2]
    checks: list[dict] = []

    def check(what: str, parsed: object, truth: object) -> None:
        checks.append({"fact": what, "parsed": parsed, "independent": truth, "match": parsed == truth})

    check("driver version (/sys/module/nvidia/version)", driver.version, sys_version)
    check("driver version (/proc/driver/nvidia/version)", proc_version, sys_version)
    check("driver version (nvidia-smi -q)", driver.version, (q.get("Driver Version") or [None])[0])
    kernel_module = next((v[0] for k, v in q.items() if k.endswith("Kernel Module Type")), None)
    if kernel_module:  # only where this nvidia-smi prints it ("Open" / "Proprietary")
        check("kernel module flavour", flavour, kernel_module.lower())
    check("GPU count (nvidia-smi -q, /sys/bus/pci)", len(gpus), len(pci))
    names = q.get("Product Name", [])
    buses = [b.lower() for b in q.get("Bus Id", [])] or [b.lower() for b in q.get("PCI/Bus Id", [])]
    mems = [v.split()[0] for v in q.get("FB Memory Usage/Total", [])]
    for i, g in enumerate(gpus):
        check(f"GPU {i} name", g.name, names[i] if i < len(names) else None)
        check(f"GPU {i} PCI bus", g.bus_id.lower(), buses[i] if i < len(buses) else None)
        check(f"GPU {i} PCI bus in /sys/bus/pci", g.bus_id.lower().split(":", 1)[-1] in
              [p[0].split(":", 1)[-1] for p in pci], True)
        check(f"GPU {i} memory MiB", str(g.memory_mib), mems[i] if i < len(mems) else None)
    cc = [g.compute_cap for g in gpus]
    return {"ok": all(c["match"] for c in checks) and bool(gpus), "driver": driver.version, "flavour": flavour,
            "compute_caps": cc, "gpus": [g.name for g in gpus], "checks": checks}


def build(out: Path, tarball: Path, cc: str, toolkit: str, flags: list[str]) -> dict:
    from provisioner import cuda_matrix
    from provisioner.operations.llama import tarball_sha256
    from provisioner.operations.llama_build import (
        BuildSpec,
        build_command,
        build_deps,
        build_script,
        configure_command,
        tarball_path,
    )

    spec = BuildSpec(backend="cuda", source={"tarball_sha256": tarball_sha256(str(tarball)), "subdir": "llama.cpp"},
                     architectures=tuple(cuda_matrix.architectures([cc])), toolkit=toolkit, flags=tuple(flags))
    out.mkdir(parents=True, exist_ok=True)
    (out / "build.sh").write_text(build_script(spec, keep_builds=2))
    src, bld = str(out / "src"), str(out / "build")
    (out / "configure.sh").write_text(f"set -e\n{configure_command(spec, src, bld)}\n{build_command(bld)}\n")
    (out / "deps").write_text(" ".join(build_deps("cuda")) + "\n")
    return {"hash": spec.hash, "architectures": list(spec.architectures), "toolkit": toolkit, "flags": flags,
            "src": src, "build": bld, "tarball_path": tarball_path(spec)}


def sass(text: str) -> list[str]:
    """``ELF file    1: libggml-cuda.1.sm_90.cubin`` → ``sm_90``, each once, sorted."""
    return sorted(set(re.findall(r"\b(sm_\d+[af]?)\b", text)))


def serve(url: str, n_predict: int = 128) -> dict:
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit("llama-server did not become healthy in 120 s")
        time.sleep(1)
    body = json.dumps({"prompt": "The quick brown fox", "n_predict": n_predict, "temperature": 0,
                       "ignore_eos": True, "cache_prompt": False}).encode()
    req = urllib.request.Request(f"{url}/completion", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        answer = json.loads(r.read())
    t = answer.get("timings", {})
    return {"predicted_n": t.get("predicted_n"), "tokens_per_s": t.get("predicted_per_second"),
            "prompt_tokens_per_s": t.get("prompt_per_second")}


def prepare(out: Path) -> dict:
    """The tarball and a tiny GGUF (2 llama layers, n_embd 128, SmolLM2's tokenizer) into ``out``."""
    import numpy as np

    from provisioner.sim import assets

    out.mkdir(parents=True, exist_ok=True)
    tarball = assets.llama_source()
    shutil.copyfile(tarball, out / "llama.cpp.tar.gz")
    with tempfile.TemporaryDirectory() as tmp, tarfile.open(tarball) as tf:
        members = [m for m in tf.getmembers() if m.name.startswith("llama.cpp/gguf-py/gguf/")]
        tf.extractall(tmp, members=members, filter="data")
        sys.path.insert(0, f"{tmp}/llama.cpp/gguf-py")
        import gguf  # llama.cpp's own writer, from the same tree that is built

        reader = gguf.GGUFReader(str(assets.smollm2_model()))
        writer = gguf.GGUFWriter(str(out / "tiny.gguf"), "llama")
        n_embd, n_head, n_ff, n_layer = 128, 4, 256, 2
        vocab = None
        for name, field in reader.fields.items():
            if not name.startswith("tokenizer.") or not field.types:
                continue
            value = field.contents()
            if name == "tokenizer.ggml.tokens":
                vocab = len(value)
            sub = field.types[1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(name, value, field.types[0], sub_type=sub)
        assert vocab, "no tokenizer in the SmolLM2 GGUF"
        writer.add_name("provision gpu_check tiny (random weights)")
        writer.add_context_length(2048)
        writer.add_embedding_length(n_embd)
        writer.add_block_count(n_layer)
        writer.add_feed_forward_length(n_ff)
        writer.add_head_count(n_head)
        writer.add_head_count_kv(n_head)
        writer.add_rope_dimension_count(n_embd // n_head)
        writer.add_layer_norm_rms_eps(1e-5)
        writer.add_vocab_size(vocab)
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
        rng = np.random.default_rng(16)

        def w(*shape: int) -> np.ndarray:
            return (rng.standard_normal(shape) * 0.02).astype(np.float16)

        writer.add_tensor("token_embd.weight", w(vocab, n_embd))
        writer.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
        for i in range(n_layer):
            writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
            for t in ("attn_q", "attn_k", "attn_v", "attn_output"):
                writer.add_tensor(f"blk.{i}.{t}.weight", w(n_embd, n_embd))
            writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
            writer.add_tensor(f"blk.{i}.ffn_gate.weight", w(n_ff, n_embd))
            writer.add_tensor(f"blk.{i}.ffn_up.weight", w(n_ff, n_embd))
            writer.add_tensor(f"blk.{i}.ffn_down.weight", w(n_embd, n_ff))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return {"tarball_mb": round((out / "llama.cpp.tar.gz").stat().st_size / 2**20, 1),
            "model_mb": round((out / "tiny.gguf").stat().st_size / 2**20, 1), "vocab": vocab}


def main(argv: list[str]) -> int:
    cmd, *args = argv
    if cmd == "prepare":
        print(json.dumps(prepare(Path(args[0]))))
    elif cmd == "build":
        print(json.dumps(build(Path(args[0]), Path(args[1]), args[2], args[3], args[4:])))
    elif cmd == "raw":
        raw(Path(args[0]))
    elif cmd == "facts":
        result = facts(Path(args[0]))
        print(json.dumps(result, indent=1))
        return 0 if result["ok"] else 1
    elif cmd == "sass":
        print(" ".join(sass(Path(args[0]).read_text())))
    elif cmd == "serve":
        print(json.dumps(serve(args[0])))
    else:
        raise SystemExit(f"unknown subcommand {cmd}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
